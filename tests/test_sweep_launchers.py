"""Sweeps through Hydra's launchers, by the real CLI in subprocesses: parallel joblib jobs on one fresh
SQLite store, and submitit (slow)."""

from __future__ import annotations

import os

import pytest

from helpers import run_cli
from sweep_helpers import TINY, _all_runs, _children, _client, _ok, _parents

pytestmark = pytest.mark.cli


def test_parallel_jobs_share_one_fresh_sqlite_store(tmp_path):
    """4 jobs x 5 epochs, joblib 2 at a time, fresh store: every run and every metric point lands."""
    res = run_cli(["-m", *TINY, "trainer.epochs=5", "hydra/launcher=parallel", "seed=0,1,2,3"], tmp_path)
    assert res.returncode == 0, _ok(res)
    assert "database is locked" not in res.stdout + res.stderr
    runs = _all_runs(tmp_path)
    (parent,) = _parents(runs)
    children = _children(runs, parent)
    assert len(runs) == 5 and len(children) == 4
    assert all(r.info.status == "FINISHED" for r in runs)
    client = _client(tmp_path)
    for c in children:
        for key in ["train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time_s", "images_per_s"]:
            assert sorted(m.step for m in client.get_metric_history(c.info.run_id, key)) == [0, 1, 2, 3, 4], key
    assert {c.data.params["seed"] for c in children} == {"0", "1", "2", "3"}
    assert len({c.data.tags["config_hash"] for c in children}) == 1  # seeds are repeats of one config
    cores = len(os.sched_getaffinity(0))
    assert {c.data.tags["threads"] for c in children} == {str(max(1, cores // 2))}  # no oversubscription


@pytest.mark.slow
def test_submitit_local_launcher(tmp_path):
    res = run_cli(["-m", *TINY, "trainer.epochs=1", "trainer.threads=1", "hydra/launcher=submitit_local",
                   "hydra.launcher.timeout_min=10", "seed=0,1"], tmp_path, timeout=600)
    assert res.returncode == 0, _ok(res)
    runs = _all_runs(tmp_path)
    (parent,) = _parents(runs)
    children = _children(runs, parent)
    assert [c.info.status for c in children] == ["FINISHED", "FINISHED"]
    assert parent.info.status == "FINISHED"
