"""`cifar-leaderboard --reported`: the write-up presets, one row each, reported beside measured.

A small store seeded with MlflowClient holds the cases the table must get right (seeds folding, an
edited preset, runs that are not write-ups, a failed run); one real run on `data=synthetic` checks
that what `cifar-sweep` logs for a preset is what the table reads.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from helpers import run_cli as run_train

from cifar_sweep.analysis import reported

REPO = Path(__file__).resolve().parents[1]
T0 = 1_700_000_000_000

# (preset, config_hash, seed, status, test_acc, reported, start offset s, images/s per epoch)
RUNS = [
    ("keras_logreg", "hL", 0, "FINISHED", 0.36, "0.37", 1, [900, 1000, 1100]),
    ("keras_logreg", "hL", 1, "FINISHED", 0.38, "0.37", 2, [900, 1200, 1300]),
    ("keras_logreg", "hL", 2, "FAILED", None, "0.37", 3, [900]),
    # lenet ran twice: an older config, then the preset as edited; only the newer counts.
    ("lenet", "hOld", 0, "FINISHED", 0.50, "0.572", 4, [100, 200]),
    ("lenet", "hNew", 0, "FINISHED", 0.58, "0.572", 5, [100, 300]),
    ("resnet_cifar2", "hR", 0, "FINISHED", 0.9685, "0.965", 6, [500, 600]),
    # Not write-ups: a preset without a reported figure, and a run of no preset.
    ("airbench", "hA", 0, "FINISHED", 0.905, None, 7, [500, 520]),
    (None, "hX", 0, "FINISHED", 0.99, None, 8, [1, 2]),
]


def seed(root: Path) -> str:
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("cifar_sweep", artifact_location=(root / "artifacts").as_uri())
    client.create_experiment("nothing_reported", artifact_location=(root / "artifacts").as_uri())
    parent = client.create_run(exp, start_time=T0, run_name="sweep", tags={"sweep_parent": "true",
                                                                          "experiment_preset": "lenet",
                                                                          "reported_acc": "0.572"})
    client.set_terminated(parent.info.run_id, "FINISHED")
    for preset, chash, s, status, acc, rep, offset, ips in RUNS:
        tags = {"model": preset or "mlp", "config_hash": chash, "device": "cpu", "threads": "1",
                "optimizer": "adam", "schedule": "constant"}
        if preset:
            tags["experiment_preset"] = preset
        if rep:
            tags.update(reported_acc=rep, reported_source=f"{preset} write-up")
        start = T0 + 1000 * offset
        run = client.create_run(exp, start_time=start, run_name=f"{preset} seed={s}", tags=tags)
        metrics = [Metric("images_per_s", float(v), start + step, step) for step, v in enumerate(ips)]
        if acc is not None:
            metrics += [Metric("test_acc", acc, start + 9, 0), Metric("best_val_acc", acc, start + 9, 0),
                        Metric("train_time_s", 10.0 * offset, start + 9, 0)]
        client.log_batch(run.info.run_id, metrics=metrics,
                         params=[Param("seed", str(s)), Param("trainer.epochs", "3")])
        client.set_terminated(run.info.run_id, status, end_time=start + 500)
    other = client.get_experiment_by_name("nothing_reported").experiment_id
    run = client.create_run(other, start_time=T0, tags={"model": "mlp", "config_hash": "hZ"})
    client.log_batch(run.info.run_id, metrics=[Metric("test_acc", 0.4, T0, 0)])
    client.set_terminated(run.info.run_id, "FINISHED")
    return uri


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return seed(tmp_path_factory.mktemp("reported_store"))


def leaderboard(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "cifar_sweep.commands.leaderboard", *args],
                          capture_output=True, text=True, env=env, timeout=600, cwd=REPO)


@pytest.mark.cli
def test_one_row_per_write_up_preset_with_the_gap(store):
    proc = leaderboard("--reported", "--tracking-uri", store, "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    rows = pd.read_csv(io.StringIO(proc.stdout)).set_index("preset")
    # airbench has no reported figure and the untagged run no preset: neither is a write-up.
    assert list(rows.index) == ["keras_logreg", "lenet", "resnet_cifar2"]
    logreg = rows.loc["keras_logreg"]
    # The FAILED seed is left out; the two finished seeds fold into mean ± sample std.
    assert logreg["n"] == 2
    assert logreg["test_acc"] == pytest.approx(0.37)
    assert logreg["test_acc_std"] == pytest.approx(0.014142, rel=1e-4)
    assert logreg["gap_pts"] == pytest.approx(0.0, abs=1e-9)
    # images/s leaves out the warm-up epoch, as on the board, then averages the two seeds.
    assert logreg["images_per_s"] == pytest.approx((1050 + 1250) / 2)
    # The edited lenet preset replaces its older configuration.
    assert rows.loc["lenet", "test_acc"] == pytest.approx(0.58)
    assert rows.loc["lenet", "n"] == 1
    assert rows.loc["lenet", "gap_pts"] == pytest.approx(0.8)
    assert rows.loc["resnet_cifar2", "gap_pts"] == pytest.approx(0.35)
    assert rows.loc["resnet_cifar2", "source"] == "resnet_cifar2 write-up"


@pytest.mark.cli
def test_table_and_markdown_show_reported_beside_measured(store):
    table = leaderboard("--reported", "--tracking-uri", store)
    assert table.returncode == 0, table.stderr
    assert "3 presets" in table.stdout
    lenet = next(line for line in table.stdout.splitlines() if line.startswith("lenet"))
    assert "57.20" in lenet and "58.00" in lenet and "+0.80" in lenet
    md = leaderboard("--reported", "--tracking-uri", store, "--format", "md")
    assert md.returncode == 0, md.stderr
    logreg = next(line for line in md.stdout.splitlines() if "keras_logreg" in line)
    assert "37.00 ± 1.41" in logreg and "+0.00" in logreg


@pytest.mark.cli
def test_filters_apply_and_no_write_up_is_one_line(store):
    proc = leaderboard("--reported", "--tracking-uri", store, "--model", "lenet", "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    assert list(pd.read_csv(io.StringIO(proc.stdout))["preset"]) == ["lenet"]
    none = leaderboard("--reported", "--tracking-uri", store, "--experiment", "nothing_reported")
    assert none.returncode != 0
    assert "Traceback" not in none.stderr
    assert len(none.stderr.strip().splitlines()) == 1
    assert "no FINISHED run of a write-up preset" in none.stderr


def test_reported_rows_of_an_empty_frame_is_empty():
    assert reported.reported_rows(pd.DataFrame(columns=["run_id", "status", "start_time"])).empty


@pytest.mark.cli
def test_a_real_preset_run_lands_in_the_table(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    train = run_train(["experiment=keras_logreg", "data=synthetic", "trainer.epochs=1", "trainer.progress=false",
                       "diagnostics.tsne=false", "diagnostics.embedding=false"], home, timeout=900)
    assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-2000:]
    proc = leaderboard("--reported", "--tracking-uri", f"sqlite:///{home / 'runs' / 'mlflow.db'}", "--format", "csv")
    assert proc.returncode == 0, proc.stderr
    row = pd.read_csv(io.StringIO(proc.stdout)).iloc[0]
    assert row["preset"] == "keras_logreg"
    assert row["reported_acc"] == pytest.approx(0.37)
    assert row["model"] == "logreg"
    assert 0 <= row["test_acc"] <= 1
    assert row["gap_pts"] == pytest.approx(100 * (row["test_acc"] - 0.37))
