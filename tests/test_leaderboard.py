"""The leaderboard on a store seeded with known runs (see store_fixtures.py for the cast)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from datasets_store import datasets_store  # noqa: F401  (module-scoped fixture)
from store_fixtures import seeded_store  # noqa: F401  (module-scoped fixture)

from cifar_sweep.commands import leaderboard as lb
from cifar_sweep.tracking import queries as rq
from cifar_sweep.tracking.store import open_store
from cifar_sweep.commands import formats as tf

REPO = Path(__file__).resolve().parents[1]

# Rows of the default ranking, best first: (run keys in the row, best_val_acc mean, std, n).
EXPECTED_ORDER = [["B"], ["A2", "A1", "A0"], ["A_cuda"], ["A_t1"], ["C"], ["D"]]


def board(store, **kw) -> lb.Board:
    return lb.build(lb.Query(tracking_uri=store.uri, **kw))


def keys_of(store, rows: pd.DataFrame) -> list[list[str]]:
    by_id = {v: k for k, v in store.ids.items()}
    return [[by_id[r] for r in ids] for ids in rows["run_ids"]]


def run_cli(*args: str, module: str = "cifar_sweep.commands.leaderboard") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env,
                          timeout=120, cwd=REPO)


def test_leaderboard_never_imports_torch():
    # Nor scipy.stats (a second or more to load): only a board with folded seeds needs it.
    code = "import cifar_sweep.commands.leaderboard, cifar_sweep.commands.compare_devices, cifar_sweep.commands.report, sys; " \
           "bad = [m for m in ('torch', 'torchvision', 'scipy.stats') if m in sys.modules]; assert not bad, bad"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr


# -- ranking and folding --------------------------------------------------------------------------


def test_rank_order_and_seed_aggregates(seeded_store):
    b = board(seeded_store)
    rows = b.rows
    assert keys_of(seeded_store, rows) == EXPECTED_ORDER
    assert list(rows["rank"]) == [1, 2, 3, 4, 5, 6]
    # The runs the rows stand for: neither the sweep parent nor the KILLED and FAILED runs, which
    # the board does not list (it says so in its heading).
    assert b.n_runs == 8 and b.unlisted == {"KILLED": 1, "FAILED": 1}
    folded = rows.iloc[1]
    assert folded["n"] == 3
    assert folded["best_val_acc"] == pytest.approx(0.72)
    assert folded["best_val_acc_std"] == pytest.approx(0.02)
    assert folded["test_acc"] == pytest.approx(0.71)
    assert folded["test_acc_std"] == pytest.approx(0.02)
    assert folded["train_time_s"] == pytest.approx(110.0)
    # images/s: mean over seeds of each run's mean without the warm-up epoch 0 -> (210+220+200)/3.
    assert folded["images_per_s"] == pytest.approx(210.0)
    assert rows.iloc[0]["reported_acc"] == pytest.approx(0.91)
    assert math.isnan(rows.iloc[0]["best_val_acc_std"])  # one run: no spread to report
    assert math.isnan(rows.iloc[4]["test_acc"])  # C never logged test_acc
    assert math.isnan(rows.iloc[5]["best_val_acc"])  # D: NaN sorts last


def test_device_and_threads_are_part_of_the_fold_key(seeded_store):
    rows = board(seeded_store).rows
    same_hash = rows[rows["config_hash"] == "hA"]
    assert sorted(zip(same_hash["device"], same_hash["threads"], same_hash["n"])) == [
        ("cpu", "1", 1), ("cpu", "2", 3), ("cuda:0", "2", 1)]


def test_no_fold_top_and_ascending_order(seeded_store):
    rows = board(seeded_store, fold=False, top=4).rows
    assert keys_of(seeded_store, rows) == [["B"], ["A2"], ["A1"], ["A_cuda"]]
    # Ties (A0 and A_t1 both 0.70 with test 0.69) break on name, then run id: stable across stores.
    rows = board(seeded_store, fold=False).rows
    assert keys_of(seeded_store, rows)[4:6] == [["A0"], ["A_t1"]]
    # Times rank ascending by default, and NaN still sorts last in either direction.
    rows = board(seeded_store, by="train_time_s").rows
    assert keys_of(seeded_store, rows)[:2] == [["A_cuda"], ["D"]]
    rows = board(seeded_store, order="asc").rows
    assert keys_of(seeded_store, rows)[0] == ["C"] and keys_of(seeded_store, rows)[-1] == ["D"]


def test_all_status_lists_failed_and_killed_with_reason_after_the_ranking(seeded_store):
    rows = board(seeded_store, all_status=True).rows
    assert keys_of(seeded_store, rows) == EXPECTED_ORDER + [["E"], ["A_killed"]]
    assert list(rows["status"].iloc[-2:]) == ["FAILED", "KILLED"]
    assert rows["rank"].iloc[-2:].isna().all()
    assert rows["failure_reason"].iloc[-1] == "KeyboardInterrupt: SIGINT"
    # The killed seed of config A did not join its finished siblings.
    assert rows.iloc[1]["n"] == 3


def test_time_to_target(seeded_store):
    rows = board(seeded_store, target=0.7).rows.set_index("rank")
    # A seeds reach 0.70 at epochs 2, 1, 1 (elapsed 32, 22, 22 s).
    assert rows.loc[2, "target_epoch"] == pytest.approx(4 / 3)
    assert rows.loc[2, "target_time_s"] == pytest.approx(76 / 3)
    assert rows.loc[2, "target_reached"] == 3
    assert (rows.loc[1, "target_epoch"], rows.loc[1, "target_time_s"]) == (0, 30)
    assert (rows.loc[3, "target_epoch"], rows.loc[3, "target_time_s"]) == (1, 8)
    assert rows.loc[5, "target_reached"] == 0 and math.isnan(rows.loc[5, "target_time_s"])


def test_filters(seeded_store):
    sweep = keys_of(seeded_store, board(seeded_store, sweep="sw1").rows)
    assert sweep == [["A2", "A1", "A0"]]
    assert keys_of(seeded_store, board(seeded_store, sweep=seeded_store.ids["parent"]).rows) == sweep
    assert keys_of(seeded_store, board(seeded_store, model="resnet9").rows) == [["B"]]
    assert keys_of(seeded_store, board(seeded_store, tags={"device": "cuda:0"}).rows) == [["A_cuda"]]
    assert keys_of(seeded_store, board(seeded_store, tags={"config_hash": "hA", "threads": "1"}).rows) == [["A_t1"]]
    assert keys_of(seeded_store, board(seeded_store, experiment="other").rows) == [["other"]]


@pytest.mark.parametrize("kw, message", [
    ({"experiment": "empty_exp"}, "experiment 'empty_exp' has no runs yet"),
    ({"experiment": "nope"}, "no experiment named 'nope' in this store; known experiments: 'Default', "
                             "'cifar_sweep', 'empty_exp', 'other'"),
    ({"model": "vgg99"}, "no run of experiment 'cifar_sweep' matches --model vgg99"),
    ({"by": "test_loss"}, "no run has a metric 'test_loss'"),
    ({"sweep": "sw1", "model": "cnn_adv"}, "no run of experiment 'cifar_sweep' matches --sweep sw1 --model cnn_adv"),
])
def test_clear_errors(seeded_store, kw, message):
    with pytest.raises(rq.StoreError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        board(seeded_store, **kw)


def test_only_unfinished_runs_say_so(seeded_store):
    with pytest.raises(rq.StoreError, match=r"^none of the 1 runs is FINISHED \(FAILED 1\); --all-status lists them"):
        board(seeded_store, model="cnn_adv")
    assert keys_of(seeded_store, board(seeded_store, model="cnn_adv", all_status=True).rows) == [["E"]]


def _client_and_ids(store):
    client = open_store(store.uri)
    return client, rq.experiment_ids(client, ["cifar_sweep"])


def test_missing_store_is_not_created(tmp_path):
    db = tmp_path / "absent.db"
    with pytest.raises(rq.StoreError, match="no MLflow store at"):
        open_store(f"sqlite:///{db}")
    assert not db.exists()


def test_fast_loading_matches_mlflow_search(seeded_store):
    client, ids = _client_and_ids(seeded_store)
    fast = rq.load_runs(client, ids)
    slow = rq.load_runs_paged(client, ids)
    assert list(fast.columns) == list(slow.columns)
    pd.testing.assert_frame_equal(fast, slow, check_dtype=False)


# -- formats --------------------------------------------------------------------------------------

MD = """\
| # | run | model | optimizer | lr | schedule | epochs | best_val_acc % | test_acc % | reported % | n | 95% CI | vs #1 | params | train time | img/s | device | threads |
|---:|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---|---:|
| 1 | =HYPERLINK("http://x","y") | resnet9 | sgd | 0.1 | onecycle | 3 | 90.00 | 89.00 | 91.00 | 1 | — | leader | 6.57M | 1h02m | 95 | cpu | 2 |
| 2 | cnn_simple adam lr=0.001 | cnn_simple | adam | 0.001 | constant | 3 | 72.00 ± 2.00 | 71.00 ± 2.00 |  | 3 | 67.03-76.97 | — | 62.0k | 1m50s | 210 | cpu | 2 |
| 3 | cnn_simple adam lr=0.001 | cnn_simple | adam | 0.001 | constant | 3 | 71.00 | 70.00 |  | 1 | — | — | 62.0k | 7.0s | 3,100 | cuda:0 | 2 |
| 4 | cnn_simple adam lr=0.001 t1 | cnn_simple | adam | 0.001 | constant | 3 | 70.00 | 69.00 |  | 1 | — | — | 62.0k | 3m20s | 105 | cpu | 1 |
| 5 | &lt;script&gt;alert(1)&lt;/script&gt; | lenet | sgd | 0.01 | step | 3 | 60.00 | — |  | 1 | — | — | 61.7k | 50.0s | 550 | cpu | 2 |
| 6 | mlp \\| pipe | mlp | adam | 0.0003 | cosine | 3 | — | 40.00 |  | 1 | — | — | 1.74M | 20.0s | 1,050 | cpu | 2 |

* 95% CI: Student's t-interval of the mean best_val_acc over a row's seeds. vs #1: Welch's t-test (two-sided, unequal variances) of the row's seeds against the leader's; p >= 0.05: within noise of the leader.
* The leader (#1) ran one seed: no row can be tested against it; run more seeds: `cifar-sweep -m ... seed=0,1,2`.
"""


def test_markdown_exact(seeded_store):
    assert lb.render(board(seeded_store), "md") == MD


def test_csv_exact_and_defused(seeded_store):
    ids = seeded_store.ids
    expected = (
        "data,rank,run_name,model,optimizer,lr,schedule,epochs,n,best_val_acc,best_val_acc_std,test_acc,test_acc_std,"
        "reported_acc,n_params,train_time_s,images_per_s,device,threads,ci_low,ci_high,p_vs_leader,within_noise,run_ids\n"
        f"cifar10-jpeg,1,\"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\",resnet9,sgd,0.1,onecycle,3,1,0.9,,0.89,,0.91,6573130,3725,95,"
        f"cpu,2,,,,,{ids['B']}\n"
        f"cifar10-jpeg,2,cnn_simple adam lr=0.001,cnn_simple,adam,0.001,constant,3,3,0.72,0.02,0.71,0.02,,62006,110,210,cpu,2,0.670317,0.769683,,,"
        f"{ids['A2']};{ids['A1']};{ids['A0']}\n"
        f"cifar10-jpeg,3,cnn_simple adam lr=0.001,cnn_simple,adam,0.001,constant,3,1,0.71,,0.7,,,62006,7,3100,cuda:0,2,,,,,{ids['A_cuda']}\n"
        f"cifar10-jpeg,4,cnn_simple adam lr=0.001 t1,cnn_simple,adam,0.001,constant,3,1,0.7,,0.69,,,62006,200,105,cpu,1,,,,,{ids['A_t1']}\n"
        f"cifar10-jpeg,5,<script>alert(1)</script>,lenet,sgd,0.01,step,3,1,0.6,,,,,61706,50,550,cpu,2,,,,,{ids['C']}\n"
        f"cifar10-jpeg,6,mlp | pipe,mlp,adam,0.0003,cosine,3,1,,,0.4,,,1738890,20,1050,cpu,2,,,,,{ids['D']}\n"
    )
    assert lb.render(board(seeded_store), "csv") == expected


def test_csv_with_all_status_and_target(seeded_store):
    text = lb.render(board(seeded_store, all_status=True, target=0.7), "csv")
    frame = pd.read_csv(pd.io.common.StringIO(text))
    assert list(frame.columns[-6:]) == ["target_epoch", "target_time_s", "target_reached", "status",
                                        "failure_reason", "run_ids"]
    assert list(frame["status"]) == ["FINISHED"] * 6 + ["FAILED", "KILLED"]
    assert frame["failure_reason"].iloc[6].startswith("FloatingPointError: non-finite loss")
    assert frame["target_time_s"].iloc[1] == pytest.approx(25.3333)


def test_terminal_table_order_and_cells(seeded_store):
    lines = lb.render(board(seeded_store, all_status=True), "table").splitlines()
    assert lines[0] == "Leaderboard: cifar_sweep, data cifar10-jpeg, by best_val_acc (10 runs in 8 rows, seeds folded)"
    assert lines[1].split()[:3] == ["#", "run", "model"]
    body, notes = lines[3:11], lines[11:]
    assert [line.split()[0] for line in body] == ["1", "2", "3", "4", "5", "6", "—", "—"]
    assert notes[0].startswith("95% CI: Student's t-interval") and notes[1].startswith("The leader (#1) ran one seed")
    assert "72.00 ± 2.00" in body[1] and "71.00 ± 2.00" in body[1] and " 3 " in body[1]
    assert body[0].startswith("1  =HYPERLINK(")
    assert "91.00" in body[0]
    # The multi-line failure reason is one line on the terminal.
    assert body[6].endswith("FAILED    FloatingPointError: non-finite loss (nan) at epoch 1 see traceback.txt")
    assert body[7].endswith("KILLED    KeyboardInterrupt: SIGINT")
    assert len(lines) == 13


def test_heading_counts_only_the_listed_runs_and_names_the_others(seeded_store):
    """Without --all-status the KILLED and FAILED runs are not listed: the heading does not count them
    among its runs, and says what it left out and how to see it."""
    heading = lb.render(board(seeded_store), "table").splitlines()[0]
    assert heading.startswith("Leaderboard: cifar_sweep, data cifar10-jpeg, by best_val_acc (8 runs in 6 rows, "
                              "seeds folded; not listed: "), heading
    assert heading.endswith(" (--all-status lists them))") and "1 KILLED" in heading and "1 FAILED" in heading


@pytest.mark.cli
def test_cli_heading_names_the_runs_it_leaves_out(seeded_store):
    res = run_cli("--tracking-uri", seeded_store.uri)
    assert res.returncode == 0, res.stderr
    heading = res.stdout.splitlines()[0]
    assert "(8 runs in 6 rows, seeds folded; not listed: " in heading and "1 KILLED" in heading, heading
    res = run_cli("--tracking-uri", seeded_store.uri, "--all-status")
    assert res.stdout.splitlines()[0].endswith("(10 runs in 8 rows, seeds folded)"), res.stdout


class Cells(HTMLParser):
    """Table rows as lists of cell texts, and every tag seen."""

    def __init__(self):
        super().__init__()
        self.rows, self.tags, self._row, self._cell = [], [], None, None

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "tr":
            self.rows.append(self._row)

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def test_html_escaped_and_exact_rows(seeded_store):
    page = lb.render(board(seeded_store), "html")
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    parsed = Cells()
    parsed.feed(page)
    assert "script" not in parsed.tags
    header, *body = parsed.rows
    assert header[:3] == ["#", "run", "model"]
    assert [r[1] for r in body] == ['=HYPERLINK("http://x","y")', "cnn_simple adam lr=0.001",
                                    "cnn_simple adam lr=0.001", "cnn_simple adam lr=0.001 t1",
                                    "<script>alert(1)</script>", "mlp | pipe"]
    assert [r[7] for r in body] == ["90.00", "72.00 ± 2.00", "71.00", "70.00", "60.00", "—"]
    assert [r[10] for r in body] == ["1", "3", "1", "1", "1", "1"]


# -- cells ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, safe", [
    ("=1+2", "'=1+2"), ("+SUM(A1)", "'+SUM(A1)"), ("-2+3", "'-2+3"), ("@cmd", "'@cmd"), ("\tx", "'\tx"),
    ("plain", "plain"), (0.5, 0.5),
])
def test_defuse_formula(raw, safe):
    assert tf.defuse_formula(raw) == safe


def test_cell_formats():
    assert tf.pct(0.72, 0.02, 3) == "72.00 ± 2.00"
    assert tf.pct(0.72, math.nan, 1) == "72.00"
    assert tf.pct(math.nan) == tf.MISSING
    assert [tf.seconds(v) for v in (7, 110, 3725)] == ["7.0s", "1m50s", "1h02m"]
    assert [tf.count(v) for v in (999, 62006, 6_573_130)] == ["999", "62.0k", "6.57M"]
    assert tf.clean_text("a\x1b[31mb\nc") == "a [31mb c"


# -- command line ---------------------------------------------------------------------------------


@pytest.mark.cli
def test_cli_csv_matches_library(seeded_store):
    done = run_cli("--tracking-uri", seeded_store.uri, "--format", "csv")
    assert done.returncode == 0, done.stderr
    assert done.stdout == lb.render(board(seeded_store), "csv")


def test_main_errors_exit_nonzero_with_one_line(seeded_store, capsys):
    assert lb.main(["--tracking-uri", seeded_store.uri, "--experiment", "empty_exp"]) == 1
    captured = capsys.readouterr()
    assert captured.err == "cifar-leaderboard: experiment 'empty_exp' has no runs yet\n"
    assert captured.out == ""
    assert lb.main(["--tracking-uri", seeded_store.uri, "--target", "90"]) == 1
    assert "--target is an accuracy fraction in (0, 1], got 90.0" in capsys.readouterr().err


def test_main_writes_file(seeded_store, tmp_path, capsys):
    out = tmp_path / "board.md"
    assert lb.main(["--tracking-uri", seeded_store.uri, "--format", "md", "--out", str(out)]) == 0
    assert out.read_text() == MD
    assert lb.main(["--tracking-uri", seeded_store.uri, "--tag", "nonsense"]) == 1
    assert "--tag wants KEY=VALUE" in capsys.readouterr().err


def test_every_store_command_refuses_a_missing_or_broken_store_in_one_line(tmp_path, capsys):
    from cifar_sweep.commands import compare_devices, reap, report, still_wrong

    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all" * 100)
    commands = {"cifar-leaderboard": lb.main, "cifar-compare-devices": compare_devices.main,
                "cifar-report": report.main, "cifar-still-wrong": still_wrong.main, "cifar-sweep-reap": reap.main}
    for prog, main in commands.items():
        missing = tmp_path / f"{prog}.db"
        assert main(["--tracking-uri", f"sqlite:///{missing}"]) == 1
        assert not missing.exists()  # refused, not created empty
        assert capsys.readouterr().err == (f"{prog}: no MLflow store at {missing}: train something first "
                                           "(cifar-sweep) or pass --tracking-uri\n")
        assert main(["--tracking-uri", f"sqlite:///{garbage}"]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"{prog}: ") and str(garbage) in err and err.count("\n") == 1


# -- one board per dataset (datasets_store.py) -------------------------------------------------------


def ids_of(store, board_) -> list[str]:
    key_of = {v: k for k, v in store.ids.items()}
    return [key_of[r] for ids in board_.rows["run_ids"] for r in ids]


def test_one_board_per_dataset_real_cifar10_first(datasets_store):
    boards = lb.build_all(lb.Query(tracking_uri=datasets_store.uri))
    assert [b.dataset for b in boards] == ["cifar10-jpeg", "cifar10-jpeg[cat,dog]", "cifar2", "synthetic"]
    assert [ids_of(datasets_store, b) for b in boards] == [["R1", "R2"], ["L2"], ["C2"], ["L1", "S1"]]
    # Ranks restart on every board: the synthetic 0.95 and the two-class 0.99 outrank nothing real.
    assert [list(b.rows["rank"]) for b in boards] == [[1, 2], [1], [1], [1, 2]]


def test_build_gives_the_real_cifar10_board(datasets_store):
    first = lb.build(lb.Query(tracking_uri=datasets_store.uri, top=1))
    assert first.dataset == "cifar10-jpeg" and ids_of(datasets_store, first) == ["R1"]
    assert first.other_datasets == ("cifar10-jpeg[cat,dog]", "cifar2", "synthetic")


def test_data_filter(datasets_store):
    (only,) = lb.build_all(lb.Query(tracking_uri=datasets_store.uri, data="synthetic"))
    assert only.dataset == "synthetic" and ids_of(datasets_store, only) == ["L1", "S1"]
    with pytest.raises(rq.StoreError, match="no run on data 'cifar100'; datasets of these runs: "
                                            "cifar10-jpeg, cifar10-jpeg\\[cat,dog\\], cifar2, synthetic"):
        lb.build_all(lb.Query(tracking_uri=datasets_store.uri, data="cifar100"))


def test_cli_prints_each_board_under_its_title(datasets_store, capsys):
    assert lb.main(["--tracking-uri", datasets_store.uri]) == 0
    titles = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Leaderboard:")]
    assert [t.split(", by")[0] for t in titles] == [
        "Leaderboard: cifar_sweep, data cifar10-jpeg", "Leaderboard: cifar_sweep, data cifar10-jpeg[cat,dog]",
        "Leaderboard: cifar_sweep, data cifar2", "Leaderboard: cifar_sweep, data synthetic"]
    assert lb.main(["--tracking-uri", datasets_store.uri, "--format", "csv"]) == 0
    frame = pd.read_csv(pd.io.common.StringIO(capsys.readouterr().out))
    assert list(frame["data"]) == ["cifar10-jpeg", "cifar10-jpeg", "cifar10-jpeg[cat,dog]", "cifar2", "synthetic",
                                   "synthetic"]
    assert list(frame["rank"]) == [1, 2, 1, 1, 1, 2]
    assert lb.main(["--tracking-uri", datasets_store.uri, "--format", "md"]) == 0
    assert capsys.readouterr().out.count("### Leaderboard: cifar_sweep, data ") == 4


def test_sweep_of_a_relaunch_lists_the_runs_it_reused(datasets_store):
    """A relaunch that skipped every job has no child runs; its parent's summary names the runs."""
    for ref in (datasets_store.ids["P1"], datasets_store.ids["P1"][:8], "/runs/multirun/relaunch"):
        (only,) = lb.build_all(lb.Query(tracking_uri=datasets_store.uri, sweep=ref))
        assert ids_of(datasets_store, only) == ["R2"], ref


def test_dataset_of_runs_from_before_the_dataset_tag():
    runs = pd.DataFrame({
        "run_id": ["a", "b", "c", "d", "e"],
        "tags.dataset": ["cifar2", None, None, None, None],
        "tags.data": ["cifar2", "synthetic", "folder", "folder", None],
        "params.data._target_": [None, None, None, "cifar_sweep.data.load_folder", None],
        "params.data.root": [None, None, None, "/d/other-copy.tgz", None],
        "params.data.classes": [None, None, "None", "['cat', 'dog']", None],
    })
    assert list(rq.dataset_column(runs)) == ["cifar2", "synthetic", "cifar10-jpeg", "other-copy[cat,dog]", ""]


# -- confidence: intervals of folded seeds, the lead tested against noise --------------------------

NOISE_RUNS = {  # config: best_val_acc per seed (0, 1, 2, ...)
    "lead": [0.80, 0.82, 0.84], "close": [0.79, 0.83, 0.81], "single": [0.60], "far": [0.50, 0.51, 0.52],
}


@pytest.fixture(scope="module")
def noise_store(tmp_path_factory):
    """Configs of three seeds (a leader, one within noise of it, one far behind) and one of one seed."""
    from mlflow.entities import Metric, Param

    root = tmp_path_factory.mktemp("noise_store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = open_store(uri, create=True)
    exp = client.create_experiment("cifar_sweep", artifact_location=(root / "artifacts").as_uri())
    ids: dict[str, list[str]] = {}
    for config, values in NOISE_RUNS.items():
        for seed, value in enumerate(values):
            run = client.create_run(exp, run_name=config, tags={
                "model": "cnn_simple", "config_hash": f"h-{config}", "device": "cpu", "threads": "2",
                "dataset": "synthetic"})
            client.log_batch(run.info.run_id, params=[Param("seed", str(seed))], metrics=[
                Metric("best_val_acc", value, 0, 0), Metric("test_acc", value - 0.01, 0, 0)])
            client.set_terminated(run.info.run_id, "FINISHED")
            ids.setdefault(config, []).append(run.info.run_id)
    return uri, ids


def _welch(config: str) -> float:
    from scipy import stats

    return stats.ttest_ind(NOISE_RUNS[config], NOISE_RUNS["lead"], equal_var=False).pvalue


def test_intervals_and_noise_marks_in_every_format(noise_store):
    uri, _ = noise_store
    b = lb.build(lb.Query(tracking_uri=uri))
    assert list(b.rows["run_name"]) == ["lead", "close", "single", "far"]
    p_close = _welch("close")
    assert p_close >= 0.05 and _welch("far") < 0.001
    table = lb.render(b, "table").splitlines()
    assert "  n       95% CI  vs #1  " in table[1]
    assert "3  77.03-86.97  leader" in table[3]  # 0.82 +- t(0.975, 2) * 0.02 / sqrt(3)
    assert f"within noise (p={p_close:.3f})" in table[4]
    assert "1            —  —" in table[5] and "behind (p<0.001)" in table[6]
    assert table[7].startswith("95% CI: Student's t-interval of the mean best_val_acc") and "Welch's t-test" in table[7]
    assert len(table) == 8  # the leader has three seeds: no "ran one seed" line
    md = lb.render(b, "md")
    assert f"| within noise (p={p_close:.3f}) |" in md and "\n\n* 95% CI: Student's t-interval" in md
    frame = pd.read_csv(pd.io.common.StringIO(lb.render(b, "csv")))
    assert list(frame.columns[-5:]) == ["ci_low", "ci_high", "p_vs_leader", "within_noise", "run_ids"]
    assert frame["ci_low"].iloc[0] == pytest.approx(0.770317, abs=1e-6)
    assert frame["p_vs_leader"].iloc[1] == pytest.approx(p_close, rel=1e-5)
    assert [str(v) for v in frame["within_noise"]] == ["nan", "True", "nan", "False"]
    page = lb.render(b, "html")
    parsed = Cells()
    parsed.feed(page)
    header, *body = parsed.rows
    assert [r[header.index("vs #1")] for r in body] == [
        "leader", f"within noise (p={p_close:.3f})", "—", "behind (p<0.001)"]
    assert '<p class="note">95% CI: Student&#x27;s t-interval' in page


def test_one_seed_per_row_says_that_there_is_no_interval(noise_store):
    uri, _ = noise_store
    text = lb.render(lb.build(lb.Query(tracking_uri=uri, model="cnn_simple", tags={"config_hash": "h-single"})),
                     "table").splitlines()
    assert "95% CI" not in text[1] and "vs #1" not in text[1]
    assert text[-1] == ("One seed per row: no interval and no test of the lead; "
                        "run more seeds: `cifar-sweep -m ... seed=0,1,2`.")
    text = lb.render(lb.build(lb.Query(tracking_uri=uri, fold=False)), "table").splitlines()
    assert "95% CI" not in text[1] and text[-1].startswith("One run per row (--no-fold): no interval")


def test_run_tags_say_rank_noise_and_interval(noise_store):
    uri, ids = noise_store
    tags = lb.run_tags(lb.build(lb.Query(tracking_uri=uri)))
    assert tags[ids["lead"][0]] == {"rank": "1", "within_noise_of_leader": "leader", "val_acc_ci95": "0.7703-0.8697"}
    assert tags[ids["close"][2]]["within_noise_of_leader"] == "true"
    assert tags[ids["far"][1]]["within_noise_of_leader"] == "false"
    assert tags[ids["single"][0]] == {"rank": "3", "within_noise_of_leader": "untested"}


@pytest.mark.cli
def test_cli_tag_runs_writes_the_tags_the_mlflow_ui_shows(noise_store):
    uri, ids = noise_store
    res = run_cli("--tracking-uri", uri, "--tag-runs", "--format", "csv")
    assert res.returncode == 0, res.stderr
    assert "cifar-leaderboard: tagged 10 runs with rank, within_noise_of_leader and the interval" in res.stderr
    assert "ci_low,ci_high,p_vs_leader,within_noise" in res.stdout.splitlines()[0]
    client = open_store(uri)
    got = {key: client.get_run(ids[key][0]).data.tags for key in NOISE_RUNS}
    assert [got[k]["rank"] for k in NOISE_RUNS] == ["1", "2", "3", "4"]
    assert [got[k]["within_noise_of_leader"] for k in NOISE_RUNS] == ["leader", "true", "untested", "false"]
    assert got["far"]["val_acc_ci95"] == "0.4852-0.5348" and "val_acc_ci95" not in got["single"]
    assert "--tag-runs" in run_cli("--help").stdout


def test_logged_steady_rate_spares_the_history_request(tmp_path, monkeypatch):
    """A run that logged `steady_images_per_s` is ranked by it; only older runs' histories are read
    (on a tracking server each history is a request: 10,000 runs were minutes)."""
    from mlflow.entities import Metric

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = open_store(uri, create=True)
    exp = client.create_experiment("cifar_sweep")
    ids = {}
    for name, summary in (("new", 500.0), ("old", None)):
        run = client.create_run(exp, run_name=name, tags={"model": name, "config_hash": name, "data": "synthetic"})
        metrics = [Metric("best_val_acc", 0.5, 0, 0), Metric("test_acc", 0.5, 0, 0)]
        metrics += [Metric("images_per_s", v, 0, step) for step, v in enumerate((100.0, 200.0, 300.0))]
        metrics += [Metric("steady_images_per_s", summary, 0, 0)] if summary is not None else []
        client.log_batch(run.info.run_id, metrics=metrics)
        client.set_terminated(run.info.run_id, "FINISHED")
        ids[name] = run.info.run_id
    asked = []
    real = rq.load_histories
    monkeypatch.setattr(rq, "load_histories", lambda c, run_ids, keys: asked.append((sorted(run_ids), keys))
                        or real(c, run_ids, keys))
    rows = board(type("S", (), {"uri": uri}), fold=False).rows
    rates = dict(zip(rows["run_name"], rows["images_per_s"]))
    assert rates == {"new": 500.0, "old": 250.0}  # the summary; the history's mean after the warm-up epoch
    assert asked == [([ids["old"]], ["images_per_s"])]
