"""A grid sweep's launch side in process, with no training: the callback refuses a sweep whose jobs
could not start, and the dry run lists every job, before any store or run exists. The fast tier's
check of these paths; test_sweep_failures.py runs them through the real CLI (marked `cli`)."""

from __future__ import annotations

import logging
import sys

import pytest

from sweep_helpers import TINY

SWEEP = ["-m", *TINY, "trainer.epochs=1", "optimizer.lr=0.1,-1", "seed=0,1"]


@pytest.fixture
def in_process_sweep(tmp_path, monkeypatch):
    """`cifar-sweep <args>` in this process, in tmp_path as its home; returns its exit code or message.

    Hydra's multirun sets up the root logger for its own output: put it back, so that later tests in
    this worker log as before."""
    from cifar_sweep.train import cli

    monkeypatch.setenv("CIFAR_SWEEP_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def sweep(args: list[str]):
        monkeypatch.setattr(sys, "argv", ["cifar-sweep", *args])
        try:
            with pytest.raises(SystemExit) as ended:
                cli()
        finally:
            root.handlers[:], root.level = handlers, level
        return ended.value.code

    return sweep


@pytest.mark.usefixtures("hydra_restore_singletons")
def test_grid_with_jobs_that_cannot_start_is_refused_and_dry_run_in_process(in_process_sweep, tmp_path, capsys):
    message = in_process_sweep(SWEEP)
    assert "the sweep was refused, nothing was run" in message
    refused = [line.strip() for line in message.splitlines() if line.strip().startswith("job #")]
    assert [line.split(" ", 2)[1] for line in refused] == ["#2", "#3"], message  # every bad job, only those
    assert all("optimizer.lr=-1 must be a positive number" in line for line in refused)
    assert not (tmp_path / "runs" / "mlflow.db").exists()  # no parent, no run

    assert in_process_sweep([*SWEEP, "sweep.dry_run=true"]) == 0
    out = capsys.readouterr().out
    assert "dry run: 4 jobs, 2 to run, 0 already FINISHED, 2 refused (the sweep would not start)" in out, out
    assert sum("refused: optimizer.lr=-1" in line for line in out.splitlines()) == 2
    assert not (tmp_path / "runs" / "mlflow.db").exists()
