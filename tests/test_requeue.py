"""SLURM-style preemption through submitit's local executor: requeued, resumed, one run per job.

submitit sends SIGUSR2 on preemption (and before a time limit); its handler asks the Hydra launcher
to checkpoint (resubmit the same job) and exits. The run is marked KILLED on the way out, and the
requeued job finds its epoch checkpoint and continues the same MLflow run (`resume=auto`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient


def _job_pids(home: Path) -> list[int]:
    """Processes running a submitted job of this sweep (submitit's `_submit` entry point)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
            env = (proc / "environ").read_bytes()
        except OSError:
            continue
        if b"submitit.core._submit" in cmd and f"CIFAR_SWEEP_HOME={home}".encode() in env:
            pids.append(int(proc.name))
    return pids


@pytest.mark.slow
@pytest.mark.cli
def test_preempted_job_is_requeued_into_the_same_run(tmp_path):
    env = {**os.environ, "CIFAR_SWEEP_HOME": str(tmp_path)}
    sweep = subprocess.Popen(
        [sys.executable, "-m", "cifar_sweep.train", "-m", "hydra/launcher=submitit_local", "data=synthetic",
         "model=cnn_simple", "trainer.epochs=4", "trainer.threads=1", "seed=0"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while not list((tmp_path / "runs" / "checkpoints").glob("*/*/last.pt")):  # epoch 0 is done
            assert time.monotonic() < deadline and sweep.poll() is None, "no checkpoint appeared"
            time.sleep(0.5)
        pids = _job_pids(tmp_path)
        assert pids, "the submitted job's process was not found"
        for pid in pids:
            os.kill(pid, signal.SIGUSR2)  # what SLURM/submitit send on preemption
        out, _ = sweep.communicate(timeout=300)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 0, out[-3000:]

    uri = f"sqlite:///{tmp_path}/runs/mlflow.db"
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["cifar_sweep"])
    children = runs[runs["tags.sweep_parent"] != "true"]
    assert len(children) == 1  # one run per config: the requeued job continued it
    run = children.iloc[0]
    assert run["status"] == "FINISHED"
    assert run["tags.resumed_from_epoch"] is not None and int(run["tags.resumed_from_epoch"]) >= 0
    steps = [m.step for m in MlflowClient(uri).get_metric_history(run.run_id, "val_acc")]
    assert sorted(steps) == [0, 1, 2, 3]  # exactly one point per epoch
