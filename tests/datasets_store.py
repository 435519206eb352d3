"""A small MLflow store whose runs trained on different datasets: the ground truth of the per-dataset
boards (leaderboard, report, still-wrong).

  key   dataset (how it is known)                 best_val_acc  test_acc  misclassified.csv (index,true,pred)
  R1    cifar10-jpeg (dataset tag)                0.85          0.84      (1,3,5) (2,0,8)
  R2    cifar10-jpeg (dataset tag)                0.80          0.79      (1,3,5) (4,9,1)
  C2    cifar2 (dataset tag)                      0.905         0.90      (1,1,0)
  S1    synthetic (dataset tag)                   0.69          0.68      (1,7,2): another test split
  L1    synthetic (only the older `data` tag)     0.95          0.94      -
  L2    cifar10-jpeg[cat,dog] (data params only)  0.99          0.98      -
  P1    a relaunched sweep's parent: no children; its sweep_summary.json lists R2 as SKIPPED

Every run FINISHED, one epoch of val_acc history each (so the report's curves are single points).
A plugin (conftest.py lists it in `pytest_plugins`): a test asks for `datasets_store` by name; the
store is built once per test session and shared read-only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

T0 = 1_800_000_000_000
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

RUNS = [  # key, tags, params, best_val_acc, test_acc, misclassified rows
    ("R1", {"dataset": "cifar10-jpeg", "data": "folder"}, {}, 0.85, 0.84, [(1, 3, 5), (2, 0, 8)]),
    ("R2", {"dataset": "cifar10-jpeg", "data": "folder"}, {}, 0.80, 0.79, [(1, 3, 5), (4, 9, 1)]),
    ("C2", {"dataset": "cifar2", "data": "cifar2"}, {}, 0.905, 0.90, [(1, 1, 0)]),
    ("S1", {"dataset": "synthetic", "data": "synthetic"}, {}, 0.69, 0.68, [(1, 7, 2)]),
    ("L1", {"data": "synthetic"}, {}, 0.95, 0.94, None),
    ("L2", {"data": "folder"}, {"data._target_": "cifar_sweep.data.load_folder", "data.classes": "['cat', 'dog']"},
     0.99, 0.98, None),
]


@dataclass
class DatasetsStore:
    uri: str
    ids: dict[str, str] = field(default_factory=dict)


def build(root: Path) -> DatasetsStore:
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("cifar_sweep", artifact_location=(root / "artifacts").as_uri())
    store = DatasetsStore(uri)
    for i, (key, tags, params, best, test, wrong) in enumerate(RUNS):
        start = T0 + 1000 * i
        run = client.create_run(exp, start_time=start, run_name=f"run {key}",
                                tags={"model": "logreg", "optimizer": "adam", "config_hash": f"h{key}",
                                      "device": "cpu", "threads": "2", **tags})
        run_id = run.info.run_id
        client.log_batch(run_id, params=[Param(k, v) for k, v in {"seed": "0", **params}.items()], metrics=[
            Metric("best_val_acc", best, start, 0), Metric("test_acc", test, start, 0),
            Metric("val_acc", best, start, 0), Metric("images_per_s", 100.0, start, 0)])
        if wrong is not None:
            lines = ["index,true,pred,confidence,true_name,pred_name"]
            lines += [f"{i},{t},{p},0.9,{CLASSES[t]},{CLASSES[p]}" for i, t, p in wrong]
            client.log_text(run_id, "\n".join(lines) + "\n", "misclassified.csv")
        client.set_terminated(run_id, "FINISHED", end_time=start + 500)
        store.ids[key] = run_id
    parent = client.create_run(exp, start_time=T0 + 10_000, run_name="sweep relaunched",
                               tags={"sweep_parent": "true", "sweep_id": "/runs/multirun/relaunch"})
    client.log_dict(parent.info.run_id, [{"job_num": 0, "status": "SKIPPED", "run_id": store.ids["R2"]}],
                    "sweep_summary.json")
    client.log_batch(parent.info.run_id, metrics=[Metric("jobs_skipped", 1, T0, 0)])
    client.set_terminated(parent.info.run_id, "FINISHED")
    store.ids["P1"] = parent.info.run_id
    return store


_CACHE: dict[str, DatasetsStore] = {}


@pytest.fixture(scope="module")
def datasets_store(tmp_path_factory) -> DatasetsStore:
    if "store" not in _CACHE:
        _CACHE["store"] = build(tmp_path_factory.mktemp("datasets_store"))
    return _CACHE["store"]
