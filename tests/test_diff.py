"""`cifar-diff RUN RUN`: on the seeded stores (known answers, in process) and on two real runs."""

from __future__ import annotations

import base64
import io
import re

import pandas as pd
import pytest
from helpers import run_cli
from store_fixtures import MISCLASSIFIED  # the fixtures seeded_store, datasets_store: conftest's plugins

from cifar_sweep.analysis import run_diff as rd
from cifar_sweep.commands import diff


def run_diff(capsys, uri, *args):
    code = diff.main([*args, "--tracking-uri", uri])
    out, err = capsys.readouterr()
    return code, out, err


def wrong_table(rows):
    return pd.DataFrame([(i, t, p, f"c{t}", f"c{p}") for i, t, p in rows],
                        columns=["index", "true", "pred", "true_name", "pred_name"])


# -- the torch-free logic -------------------------------------------------------------------------


def test_config_diff_lists_only_differing_keys_and_marks_missing_ones():
    a = {"optimizer.lr": "0.001", "seed": "0", "data.mean": "[1]", "only.a": "x"}
    b = {"optimizer.lr": "0.01", "seed": "0", "data.mean": "[2]"}
    table = rd.config_diff(a, b)
    assert table.values.tolist() == [["only.a", "x", rd.MISSING], ["optimizer.lr", "0.001", "0.01"]]


def test_image_diff_counts_each_side_and_both():
    a = wrong_table([(1, 3, 5), (2, 0, 8), (9, 4, 4)])
    b = wrong_table([(1, 3, 2), (5, 2, 4)])
    images = rd.image_diff(a, b)
    assert images.compared
    assert images.a_right_b_wrong["index"].tolist() == [5]   # B wrong, A right
    assert images.b_right_a_wrong["index"].tolist() == [2, 9]
    assert images.both_wrong == 1
    assert images.a_right_b_wrong["pred"].tolist() == [4]     # B's wrong answer


def test_image_diff_refuses_splits_that_disagree_on_the_truth():
    images = rd.image_diff(wrong_table([(1, 3, 5)]), wrong_table([(1, 4, 5)]))
    assert not images.compared and "true class" in images.note


def test_split_mismatch_names_the_seed_and_data_keys():
    assert "different seeds (0 vs 1)" in rd.split_mismatch({"seed": "0"}, {"seed": "1"})
    assert "data.n_test" in rd.split_mismatch({"seed": "0", "data.n_test": "500"}, {"seed": "0", "data.n_test": "600"})
    assert rd.split_mismatch({"seed": "0", "data.root": "/a", "data.augment.flip": "True"},
                             {"seed": "0", "data.root": "/b", "data.augment.flip": "False"}) == ""


def test_curves_png_is_one_figure_with_both_runs():
    hist = pd.DataFrame([("a", k, s, v, 0) for k in rd.CURVE_KEYS for s, v in enumerate([0.5, 0.6])]
                        + [("b", "val_acc", 0, 0.4, 0)], columns=["run_id", "key", "step", "value", "timestamp"])
    table = rd.curves(hist, "a", "b")
    assert table.columns.tolist() == ["epoch", "val_acc A", "val_acc B", "train_loss A", "train_loss B"]
    assert table["val_acc B"].isna().tolist() == [False, True]
    png = rd.curves_png(table, "run a", "run b")
    assert png.startswith(b"\x89PNG")


# -- the command on the seeded store --------------------------------------------------------------


def test_diff_table_on_seeded_runs(capsys, seeded_store):
    ids = seeded_store.ids
    code, out, err = run_diff(capsys, seeded_store.uri, ids["A0"][:8], ids["B"][:8])
    assert code == 0, err
    # Config: the keys that differ, and not those that do not (both ran with val_size 5000).
    assert re.search(r"optimizer\.lr\s+0\.001\s+0\.1", out)
    assert "data.val_size" not in out
    # Metrics side by side with B - A.
    assert re.search(r"best_val_acc\s+70\.00%\s+90\.00%\s+\+20\.00 pt", out)
    assert re.search(r"train_time_s\s+100\.00 s\s+3725\.00 s\s+\+3625\.00 s", out)
    # val_acc per epoch of both runs (the seeded store has no train_loss: shown as missing).
    assert re.search(r"^\s*2\s+0\.7000\s+0\.9000\s+—\s+—$", out, re.M)
    # Same seed, same data: MISCLASSIFIED says A0 misses {0, 6}, B misses {1, 2, 4, 7}.
    a_wrong, b_wrong = {r[0] for r in MISCLASSIFIED["A0"]}, {r[0] for r in MISCLASSIFIED["B"]}
    assert (f"A right & B wrong: {len(b_wrong - a_wrong)}; B right & A wrong: {len(a_wrong - b_wrong)}; "
            f"both wrong: {len(a_wrong & b_wrong)}") in out


def test_diff_says_why_images_are_not_compared(capsys, seeded_store):
    ids = seeded_store.ids
    code, out, _ = run_diff(capsys, seeded_store.uri, ids["A1"], ids["A2"])
    assert code == 0 and "per image: the runs shuffled their test splits with different seeds (1 vs 2)" in out
    code, out, _ = run_diff(capsys, seeded_store.uri, ids["A0"], ids["C"])
    assert code == 0 and "per image: run B logged no misclassified.csv" in out


def test_diff_markdown(capsys, seeded_store):
    ids = seeded_store.ids
    code, out, _ = run_diff(capsys, seeded_store.uri, ids["A0"], ids["B"], "--format", "md")
    assert code == 0
    assert "## metrics" in out and "| best_val_acc | 70.00% | 90.00% | +20.00 pt |" in out


def test_diff_html_embeds_the_curves(capsys, seeded_store, tmp_path):
    ids = seeded_store.ids
    out_file = tmp_path / "diff.html"
    code, _, err = run_diff(capsys, seeded_store.uri, ids["A0"], ids["B"], "--format", "html", "--out", str(out_file))
    assert code == 0, err
    page = out_file.read_text()
    pngs = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(pngs) == 1 and base64.b64decode(pngs[0]).startswith(b"\x89PNG")
    assert "<h2>per image</h2>" in page and "A right &amp; B wrong: 4" in page
    # The seeded runs logged no config.yaml: no test images to draw, and the page says so.
    assert "no images" in page and "config.yaml" in page


def test_diff_refuses_runs_on_different_datasets(capsys, datasets_store):
    ids = datasets_store.ids
    code, out, err = run_diff(capsys, datasets_store.uri, ids["R1"], ids["S1"])
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert "different datasets (cifar10-jpeg vs synthetic)" in err and "--force" in err
    code, out, err = run_diff(capsys, datasets_store.uri, ids["R1"], ids["S1"], "--force")
    assert code == 0 and "data: cifar10-jpeg vs synthetic" in out


def test_diff_unknown_run_is_one_line(capsys, seeded_store):
    code, _, err = run_diff(capsys, seeded_store.uri, seeded_store.ids["A0"], "zzzzzzzz")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no run 'zzzzzzzz'" in err


# -- two real runs through the CLI ----------------------------------------------------------------


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    home = tmp_path_factory.mktemp("diff_home")
    for lr in ("0.001", "0.01"):
        res = run_cli(["data=synthetic", "trainer.epochs=2", "model=logreg", f"optimizer.lr={lr}"], home)
        assert res.returncode == 0, res.stderr[-3000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{home / 'runs' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("cifar_sweep").experiment_id
    runs = client.search_runs([exp], order_by=["attributes.start_time"])
    return home, client, [r.info.run_id for r in runs]


@pytest.mark.cli
def test_diff_two_real_runs(two_runs, tmp_path):
    home, client, (a, b) = two_runs
    res = run_cli([a[:8], b[:8]], home, module="cifar_sweep.commands.diff")
    assert res.returncode == 0, res.stderr
    assert re.search(r"config: 1 key differs\s+key\s+A\s+B\s+-+\s+-+\s+-+\s+optimizer\.lr\s+0\.001\s+0\.01\n", res.stdout)
    assert re.search(r"^\s*1(\s+\d\.\d{4}){4}$", res.stdout, re.M)  # epoch 1: val_acc and train_loss of both
    # The counts are the set differences of the two runs' misclassified.csv.
    wrong = [set(pd.read_csv(io.StringIO(_text(client, r, "misclassified.csv")))["index"]) for r in (a, b)]
    assert (f"A right & B wrong: {len(wrong[1] - wrong[0])}; B right & A wrong: {len(wrong[0] - wrong[1])}; "
            f"both wrong: {len(wrong[0] & wrong[1])}") in res.stdout

    page = tmp_path / "diff.html"
    res = run_cli([a, b, "--format", "html", "--out", str(page)], home, module="cifar_sweep.commands.diff")
    assert res.returncode == 0, res.stderr
    html = page.read_text()
    pngs = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(pngs) == 3, html[-2000:]  # the curves, then a grid per side (synthetic data rebuilds in a second)
    assert "A right, B wrong: " in html and "B right, A wrong: " in html


def _text(client, run_id, artifact):
    from cifar_sweep.tracking.lookup import read_text

    return read_text(client, run_id, artifact)


# -- runs of different seeds: matched by each image's place in the dataset -----------------------


def test_image_diff_matches_runs_of_other_seeds_by_source_index():
    # The same two images, at other positions of each run's shuffled split.
    a = wrong_table([(0, 3, 5), (1, 0, 8)]).assign(source_index=[40, 7])
    b = wrong_table([(6, 3, 2), (2, 1, 4)]).assign(source_index=[40, 12])
    assert rd.by_source(a, b, "d1", "d1") and not rd.by_source(a, b, "d1", "d2")
    assert not rd.by_source(a.drop(columns=["source_index"]), b, "d1", "d1")
    images = rd.image_diff(a, b, mismatch="different seeds", same_source=True)
    assert images.compared and images.by_source and images.both_wrong == 1
    assert images.b_right_a_wrong["index"].tolist() == [7] and images.a_right_b_wrong["index"].tolist() == [12]


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    """Two runs of one config on a small image tree, seeds 0 and 1: their test splits are shuffled apart."""
    from data_trees import make_tree
    from mlflow.tracking import MlflowClient

    home = tmp_path_factory.mktemp("diff_seeds")
    make_tree(home / "tree", n_train=12, n_test=16)
    res = run_cli(["-m", "data=folder", f"data.root={home / 'tree'}", "data.val_size=4", "model=logreg",
                   "trainer.epochs=1", "seed=0,1"], home)
    assert res.returncode == 0, res.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{home / 'runs' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("cifar_sweep").experiment_id
    runs = [r for r in client.search_runs([exp], order_by=["params.seed"]) if "seed" in r.data.params]
    return home, client, [r.info.run_id for r in runs]


@pytest.mark.cli
def test_diff_compares_the_images_of_runs_with_different_seeds(two_seeds, tmp_path):
    home, client, (a, b) = two_seeds
    tables = [pd.read_csv(io.StringIO(_text(client, r, "misclassified.csv"))) for r in (a, b)]
    assert all("source_index" in t for t in tables)
    # The positions in the split differ between the seeds; the source positions name the images.
    wrong = [set(t["source_index"]) for t in tables]
    res = run_cli([a[:8], b[:8]], home, module="cifar_sweep.commands.diff")
    assert res.returncode == 0, res.stderr
    assert "different seeds" not in res.stdout
    assert (f"A right & B wrong: {len(wrong[1] - wrong[0])}; B right & A wrong: {len(wrong[0] - wrong[1])}; "
            f"both wrong: {len(wrong[0] & wrong[1])}") in res.stdout
    page = tmp_path / "diff.html"
    res = run_cli([a, b, "--format", "html", "--out", str(page)], home, module="cifar_sweep.commands.diff")
    assert res.returncode == 0, res.stderr
    shown = sum(1 for side in (wrong[1] - wrong[0], wrong[0] - wrong[1]) if side)
    assert len(re.findall(r'src="data:image/png;base64,', page.read_text())) == 1 + shown
