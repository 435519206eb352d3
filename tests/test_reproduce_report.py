"""The reproduction report: rows read from a store, verdicts, rows carried from an earlier store, the Markdown.

The rows come from `analysis.reproduction` (read from a small store seeded here with the cases that
matter), the Markdown from `commands.reproduction_view`; benchmarks/reproduce.py only runs the sweeps
and writes the files, so its own test checks that a pass over a few presets still reports them all.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cifar_sweep.analysis import reproduction
from cifar_sweep.analysis.ranking import Query
from cifar_sweep.commands import reproduction_view
from cifar_sweep.training import machine

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
T0 = 1_700_000_000_000


# -- a store with the cases the report must get right ----------------------------------------------


def log_run(client, exp: str, preset: str, seed: int, offset_s: int, *, status: str = "FINISHED",
            config_hash: str | None = None, val_acc=(0.3, 0.4), test_acc: float | None = 0.4,
            summary: dict | None = None, params: dict | None = None, tags: dict | None = None) -> str:
    from mlflow.entities import Metric, Param

    start = T0 + 1000 * offset_s
    tags = {"experiment_preset": preset, "model": preset, "config_hash": config_hash or f"h-{preset}",
            "device": "cpu", "threads": "1", **(tags or {})}
    run = client.create_run(exp, start_time=start, run_name=f"{preset} seed={seed}", tags=tags)
    metrics = []
    for step, acc in enumerate(val_acc):
        metrics += [Metric("val_acc", acc, start + 10 * step, step),
                    Metric("elapsed_s", 100.0 * (step + 1), start + 10 * step, step),
                    Metric("epoch_time_s", 90.0 - 10 * step, start + 10 * step, step),
                    Metric("images_per_s", 1000.0 + 100 * step, start + 10 * step, step)]
    if status == "FINISHED":
        done = {"test_acc": test_acc, "best_val_acc": max(val_acc), "train_time_s": 170.0, **(summary or {})}
        metrics += [Metric(k, v, start + 99, 0) for k, v in done.items()]
    params = {"seed": str(seed), "trainer.epochs": str(len(val_acc)), **(params or {})}
    client.log_batch(run.info.run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()])
    client.set_terminated(run.info.run_id, status, end_time=start + 60_000)
    return run.info.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    from cifar_sweep.tracking.store import open_store

    root = tmp_path_factory.mktemp("reproduce_store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = open_store(uri, create=True)
    exp = client.create_experiment("reproduce", artifact_location=(root / "artifacts").as_uri())
    reported = {"reported_acc": "0.37"}
    # keras_logreg: two seeds fold; a third seed of an older configuration does not count.
    log_run(client, exp, "keras_logreg", 0, 1, config_hash="old", test_acc=0.10, tags=reported)
    log_run(client, exp, "keras_logreg", 0, 2, test_acc=0.36, tags=reported)
    log_run(client, exp, "keras_logreg", 1, 3, test_acc=0.38, tags=reported)
    # lenet: judged on the mean of its per-class accuracies (one logged the old way, test_acc_<class>).
    classes = {f"class_acc/{c}": 0.62 for c in reproduction.LENET_CLASSES}
    classes |= {"class_acc/bird": 0.0}
    classes.pop("class_acc/truck")
    classes["test_acc_truck"] = 0.5
    log_run(client, exp, "lenet", 0, 4, test_acc=0.3, summary=classes)
    # airbench: the time its per-epoch test accuracy first reached 90%.
    log_run(client, exp, "airbench", 0, 5, val_acc=(0.85, 0.91, 0.92), test_acc=0.92)
    # resnet9: a shortened schedule; a full run's time from the logged steady epoch and evaluation.
    log_run(client, exp, "resnet9", 0, 6, val_acc=(0.12, 0.21), test_acc=0.21,
            summary={"steady_epoch_time_s": 30.0, "first_epoch_time_s": 50.0, "total_eval_time_s": 20.0},
            params={"trainer.limit_train_batches": "12"})
    # tf_convnet: killed after two epochs, nothing finished.
    log_run(client, exp, "tf_convnet", 0, 7, status="KILLED", val_acc=(0.5, 0.6),
            tags={"failure_reason": "killed by the time limit\nmore"})
    return uri


@pytest.fixture(scope="module")
def rows(store) -> dict[str, dict]:
    return {r["preset"]: r for r in reproduction.measure(Query(tracking_uri=store, experiment="reproduce"))}


def test_every_preset_gets_a_row_in_the_catalogues_order(rows):
    assert list(rows) == list(reproduction.PRESETS)
    assert rows["keras_mlp"]["verdict"] == "NOT RUN (no run of it in this store)"


def test_seeds_fold_and_only_the_newest_configuration_counts(rows):
    logreg = rows["keras_logreg"]
    assert logreg["n"] == 2 and logreg["seeds"] == [0, 1]
    assert logreg["test_acc"] == pytest.approx(0.37)
    assert logreg["verdict"] == "within 37.0% ± 3"
    assert logreg["run_wall_s"] == 60.0
    assert logreg["test_acc_by_epoch"] == [0.3, 0.4]  # averaged over the seeds, epoch by epoch
    assert logreg["images_per_s"] == pytest.approx(1100.0)  # the warm-up epoch left out, as on the board


def test_per_class_accuracies_judge_a_per_class_write_up(rows):
    lenet = rows["lenet"]
    assert list(lenet["per_class"]) == sorted(reproduction.LENET_CLASSES)
    assert lenet["per_class"]["bird"] == 0.0 and lenet["per_class"]["truck"] == 0.5
    # The mean of the classes (0.546), not the test accuracy (0.30), is the figure judged.
    assert lenet["verdict"] == "within 57.2% ± 4"


def test_time_to_target_and_a_full_runs_estimate_come_from_the_logged_metrics(rows):
    airbench = rows["airbench"]
    assert airbench["epoch_to_target"] == 1 and airbench["time_to_target_s"] == 200.0
    # 24 epochs x (30 s steady epoch x 98 / 12 batches + 20 s / 2 epochs of evaluation)
    assert rows["resnet9"]["full_run_estimate_s"] == round(24 * (30.0 * 98 / 12 + 10.0))
    assert rows["resnet9"]["verdict"].startswith("learns")


def test_a_killed_run_shows_how_far_it_got(rows):
    killed = rows["tf_convnet"]
    assert killed["n"] == 0 and killed["epochs_done"] == 2 and killed["last_epoch_acc"] == 0.6
    assert killed["verdict"] == "NOT RUN TO THE END (KILLED after 2 of 2 epochs: killed by the time limit)"


def test_a_smoke_check_is_not_judged(store):
    quick = reproduction.measure(Query(tracking_uri=store, experiment="reproduce"), ["keras_logreg"], judged=False)
    assert [r["verdict"] for r in quick] == ["smoke check (not judged)"]


def test_the_report_shows_the_rows_sections_and_curves(rows):
    text = reproduction_view.markdown(list(rows.values()), "From a test store.")
    line = next(x for x in text.splitlines() if x.startswith("| `keras_logreg`"))
    assert "| 37.00 ± 1.41 |" in line and "| 1.0 min |" in line and "| 1,100 |" in line
    assert "### `lenet` per class (test accuracy %)" in text
    assert "first >= 90% after epoch 2, 3.3 min into the run" in text
    assert "(60.00 after epoch 2 of 2)" in text


@pytest.mark.cli
def test_the_leaderboard_prints_the_report_and_says_what_is_wrong_in_one_line(store):
    def leaderboard(*args):
        return subprocess.run([sys.executable, "-m", "cifar_sweep.commands.leaderboard", "--reproduction",
                               "--tracking-uri", store, *args], capture_output=True, text=True, timeout=300,
                              cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})

    md = leaderboard("--experiment", "reproduce", "--format", "md")
    assert md.returncode == 0, md.stderr
    assert md.stdout.startswith("# Every write-up reproduced") and "| `keras_logreg` |" in md.stdout
    table = leaderboard("--experiment", "reproduce")
    assert table.returncode == 0 and "NOT RUN" in table.stdout
    wrong = leaderboard("--experiment", "nope")
    assert wrong.returncode == 1 and len(wrong.stderr.strip().splitlines()) == 1
    assert "no experiment named 'nope'" in wrong.stderr


# -- rows an earlier store measured ----------------------------------------------------------------


def row(name: str, n: int, acc: float = math.nan, epochs_done: int = 0) -> dict:
    preset = reproduction.PRESETS[name]
    return {"preset": name, "writeup": preset.writeup, "network": preset.network, "reported": preset.reported,
            "epochs": 2, "shortened": list(preset.shortened), "n": n, "test_acc": acc, "test_acc_std": math.nan,
            "best_epoch_acc": acc, "run_wall_s": 60.0, "images_per_s": 100.0, "verdict": "v",
            "per_class": {}, "test_acc_by_epoch": [], "epochs_done": epochs_done, "last_epoch_acc": 0.3}


def previous(rows: list[dict], quick: bool = False) -> dict:
    return {"machine": {"date": "2026-12-01 10:00"}, "home": "/tmp/old-store", "quick": quick,
            "commands": ["2026-12-01 09:00  reproduce.py --presets lenet"], "results": rows}


def test_a_preset_this_store_never_ran_keeps_the_earlier_row_marked():
    now = [row("lenet", 0), row("keras_mlp", 2, 0.46)]
    out = {r["preset"]: r for r in reproduction.carried(now, previous([row("lenet", 1, 0.55), row("keras_mlp", 1, 0.40)]))}
    assert out["lenet"]["test_acc"] == 0.55
    assert out["lenet"]["carried_from"] == {"store": "/tmp/old-store", "written": "2026-12-01 10:00",
                                            "commands": ["2026-12-01 09:00  reproduce.py --presets lenet"]}
    # This store measured keras_mlp: its figure wins, unmarked.
    assert out["keras_mlp"]["test_acc"] == 0.46 and "carried_from" not in out["keras_mlp"]


def test_a_run_stopped_here_shows_this_stores_progress_not_an_old_figure():
    out = reproduction.carried([row("lenet", 0, epochs_done=1)], previous([row("lenet", 1, 0.55)]))
    assert out[0]["n"] == 0 and "carried_from" not in out[0]


def test_nothing_carries_from_a_smoke_check_or_an_unmeasured_row():
    now = [row("lenet", 0), row("vgg16", 0)]
    assert reproduction.carried(now, previous([row("lenet", 1, 0.5)], quick=True)) == now
    assert reproduction.carried(now, previous([row("vgg16", 0)])) == now
    assert reproduction.carried(now, None) == now


def test_the_table_marks_carried_figures_and_names_where_they_came_from():
    rows = reproduction.carried([row("lenet", 0), row("keras_mlp", 1, 0.4685)], previous([row("lenet", 1, 0.5486)]))
    text = reproduction_view.markdown(rows, "source", ["cmd"], home="/tmp/old-store")
    lenet = next(line for line in text.splitlines() if line.startswith("| `lenet`"))
    mlp = next(line for line in text.splitlines() if line.startswith("| `keras_mlp`"))
    assert "54.86 †" in lenet and "†" not in mlp
    assert "earlier store (at this same path, since removed; its report written 2026-12-01 10:00)" in text
    assert "2026-12-01 09:00  reproduce.py --presets lenet" in text
    elsewhere = reproduction_view.markdown(rows, "source", ["cmd"], home="/tmp/new-store")
    assert "earlier store (/tmp/old-store;" in elsewhere


def test_the_committed_report_is_the_view_of_the_committed_figures():
    """REPRODUCE.md is written from the rows reproduce.json keeps: the view must give it back unchanged."""
    saved = json.loads((BENCH / "results" / "reproduce.json").read_text())
    source = (f"Written by `benchmarks/reproduce.py` on {saved['machine']['date']}; "
              f"machine: {machine.summary_line(saved['machine'])}.")
    text = reproduction_view.markdown(saved["results"], source, saved["commands"], saved["quick"], home=saved["home"])
    assert text == (BENCH / "REPRODUCE.md").read_text()


# -- the driver ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reproduce():
    sys.path.insert(0, str(BENCH))  # the script imports its sibling `_common` as a top-level module
    try:
        spec = importlib.util.spec_from_file_location("reproduce_script", BENCH / "reproduce.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCH))


def test_a_pass_over_some_presets_still_reports_the_whole_zoo(reproduce, monkeypatch, tmp_path):
    """Training two presets must not drop the other rows from the report."""
    asked = []
    monkeypatch.setattr(reproduce, "measure", lambda names, args: asked.extend(names) or [row(n, 0) for n in names])
    monkeypatch.setattr(reproduce, "run_preset", lambda name, args: {"exit": 0})
    monkeypatch.setattr(reproduce, "previous_report", lambda: None)
    assert reproduce.main(["--home", str(tmp_path), "--presets", "lenet", "--report-only", "--no-write"]) == 0
    assert asked == list(reproduce.PRESETS)


def test_the_driver_reads_a_store_it_has_not_made_yet_as_nothing_run(reproduce, tmp_path, capsys):
    assert reproduce.main(["--home", str(tmp_path / "new"), "--report-only", "--no-write", "--no-carry"]) == 0
    out = capsys.readouterr().out
    assert out.count("NOT RUN (no run of it in this store)") == len(reproduce.PRESETS)
