"""Where the CLI promises one clear line, it prints that line and no traceback: a read-only store (a
single run and a sweep), a run whose only checkpoint is damaged, a single run that diverges (which
also ends FAILED in MLflow, with the reason)."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from helpers import run_cli, signal_after_first_epoch

pytestmark = pytest.mark.cli

TINY = ["data=synthetic", "data.n_train=300", "data.val_size=50", "data.n_test=50", "model=logreg",
        "diagnostics.embedding=false", "tracking.misclassified_grid=false", "tracking.system_metrics_s=0"]
NOISE = ("Traceback", "ERROR mlflow", "Error executing job", "HYDRA_FULL_ERROR=1 for a complete stack trace")


def _quiet(res) -> str:
    out = res.stdout + res.stderr
    assert not [n for n in NOISE if n in out], out[-4000:]
    return out


def _error_lines(out: str, start: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(start)]


def _without_root_override():
    """As root, file modes bind nobody: drop the capabilities that override them (for the child only),
    so a read-only file is read-only to it as to any user."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    pr_capbset_drop, cap_dac_override, cap_dac_read_search = 24, 1, 2
    for cap in (cap_dac_override, cap_dac_read_search):
        if libc.prctl(pr_capbset_drop, cap, 0, 0, 0) != 0:
            os._exit(97)  # the test cannot make the store read-only here


@pytest.mark.parametrize("sweep", [False, True], ids=["run", "sweep"])
def test_read_only_store_is_one_line(tmp_path, sweep):
    from cifar_sweep.tracking.store import open_store

    db = tmp_path / "runs" / "mlflow.db"
    db.parent.mkdir()
    open_store(f"sqlite:///{db}", create=True)  # a real MLflow store, then made read-only
    db.chmod(0o444)
    env = {**os.environ, "CIFAR_SWEEP_HOME": str(tmp_path)}
    env.pop("MLFLOW_RUN_ID", None)
    args = ["-m", *TINY, "seed=0,1"] if sweep else TINY
    res = subprocess.run([sys.executable, "-m", "cifar_sweep.train", *args], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300, preexec_fn=_without_root_override)
    if res.returncode == 97:
        pytest.skip("cannot drop the root capabilities that make a read-only file writable")
    assert res.returncode != 0
    out = _quiet(res)
    (line,) = [line for line in out.splitlines() if "read-only" in line]
    assert line.startswith(("cifar-sweep: ", "cifar_sweep: "))
    assert f"the tracking store {db} is read-only; make it writable or set tracking.uri" in line
    assert len(out.strip().splitlines()) <= 3, out  # Hydra's "Launching" lines never come: nothing starts


def _checkpoint_after_epoch0(home: Path, args: list[str]) -> Path:
    """A run stopped by Ctrl-C after epoch 0: its checkpoint folder."""
    code, _, out = signal_after_first_epoch(home, args, signal.SIGINT)
    assert code == 130, out[-3000:]
    (folder,) = (home / "runs" / "checkpoints" / "cifar_sweep").iterdir()
    return folder


def test_damaged_only_checkpoint_is_one_line(tmp_path):
    args = [*TINY, "model=cnn_simple", "trainer.threads=1", "trainer.epochs=30"]
    folder = _checkpoint_after_epoch0(tmp_path, args)
    damaged = [path for path in folder.glob("*.pt")]
    assert damaged
    for path in damaged:
        path.write_bytes(b"\0" * 512)
    res = run_cli(args, tmp_path)
    assert res.returncode == 1
    (line,) = _error_lines(_quiet(res), "cifar-sweep: ")
    assert line.startswith(f"cifar-sweep: no usable checkpoint in {folder}: ")
    assert "Delete the folder (or set resume=false) to start over." in line


def test_diverging_run_is_one_line_and_failed(tmp_path):
    res = run_cli([*TINY, "optimizer=sgd", "optimizer.lr=1e38", "trainer.epochs=2"], tmp_path)
    assert res.returncode == 1
    (line,) = _error_lines(_quiet(res), "cifar-sweep: ")
    assert line.startswith("cifar-sweep: non-finite loss at epoch 0 step ")
    client = MlflowClient(f"sqlite:///{tmp_path}/runs/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("cifar_sweep").experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.tags["failure_reason"].startswith("NonFiniteLossError: non-finite loss at epoch 0 step ")
