"""The median pruner in process, on a real SQLite store: siblings of the same sweep, the same epoch."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient


def test_median_pruner_compares_with_siblings_at_the_same_epoch(tmp_path, monkeypatch):
    from mlflow.entities import Metric

    from cifar_sweep.sweeps.pruning import MedianPruner
    from cifar_sweep.tracking import sweep_runs
    from cifar_sweep.tracking.store import ensure_experiment

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    experiment_id = ensure_experiment(uri, "prune")
    client = MlflowClient(uri)

    def run(sweep_id, accs):
        run_id = client.create_run(experiment_id, tags={"sweep_id": sweep_id}).info.run_id
        client.log_batch(run_id, metrics=[Metric("val_acc", a, 0, step) for step, a in enumerate(accs)])
        return run_id

    run("s1", [0.5, 0.6]), run("s1", [0.7, 0.8]), run("s1", [0.9]), run("other", [0.0, 0.0])
    me = run("s1", [])
    # Each check is one bulk history read of all siblings, never a history per sibling.
    reads, bulk_read = [], sweep_runs.load_histories
    monkeypatch.setattr(sweep_runs, "load_histories", lambda client, ids, keys: reads.append(ids) or
                        bulk_read(client, ids, keys))
    pruner = MedianPruner(uri, me, "s1", after_epoch=1, min_siblings=2)
    assert not pruner.should_stop(0, 0.1)  # before after_epoch
    assert pruner.should_stop(1, 0.65) and pruner.median == pytest.approx(0.7)  # median of 0.6, 0.8
    assert not pruner.should_stop(1, 0.75)
    assert len(reads) == 2 and all(len(ids) == 3 and me not in ids for ids in reads)
    assert not MedianPruner(uri, me, "s1", after_epoch=1, min_siblings=3).should_stop(1, 0.1)  # too few
