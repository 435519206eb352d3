"""The dataset a run logs: its source is a local file MLflow reads one way, with no warning."""

from __future__ import annotations

import json
import warnings

from mlflow.tracking import MlflowClient

from cifar_sweep.tracking.run import RunTracker


def test_a_local_dataset_source_logs_without_a_warning(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = RunTracker.start(uri, "data", "run", {})
    archive = tmp_path / "cifar10-jpeg.tar.gz"
    archive.write_bytes(b"not read")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tracker.log_dataset("cifar10-jpeg", "0123456789abcdef", str(archive), {"train": 1})
    tracker.finish()
    assert not [str(w.message) for w in caught if "dataset source" in str(w.message)], [str(w.message) for w in caught]
    (found,) = MlflowClient(uri).get_run(tracker.run_id).inputs.dataset_inputs
    assert found.dataset.source_type == "local"
    assert json.loads(found.dataset.source) == {"uri": archive.resolve().as_uri()}
