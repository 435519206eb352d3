"""A small MLflow store seeded with known, messy runs: the ground truth of the reporting tests.

A plugin (conftest.py lists it in `pytest_plugins`): a test asks for `seeded_store` by name, and
imports only the constants (`from store_fixtures import CLASSES`). Creating a SQLite store runs
MLflow's migrations (seconds), so the store is built once per test session and shared read-only by
every module that uses it.

What is in experiment "cifar_sweep" (best_val_acc / test_acc, per run):

  key        name                           model       device  threads seed status    best   test
  A0,A1,A2   cnn_simple adam lr=0.001       cnn_simple  cpu     2       0,1,2 FINISHED .70/.72/.74  .69/.71/.73
  A_cuda     cnn_simple adam lr=0.001       cnn_simple  cuda:0  2       0     FINISHED .71    .70
  A_t1       cnn_simple adam lr=0.001 t1    cnn_simple  cpu     1       0     FINISHED .70    .69
  A_killed   cnn_simple adam lr=0.001       cnn_simple  cpu     2       3     KILLED   -      -
  B          =HYPERLINK("http://x","y")     resnet9     cpu     2       0     FINISHED .90    .89   reported .91
  C          <script>alert(1)</script>      lenet       cpu     2       0     FINISHED .60    (none)
  D          mlp | pipe                     mlp         cpu     2       0     FINISHED NaN    .40
  E          cnn_adv sgd lr=10              cnn_adv     cpu     2       0     FAILED   -      -
  parent     sweep sw1                      (sweep parent: no metrics)

A0-A2, A_cuda, A_t1 and A_killed share config_hash "hA" (they differ only by seed, device or
threads); A0-A2 and A_killed are jobs of sweep "sw1" under the parent run. Experiment
"empty_exp" has no runs; experiment "other" has one finished run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pytest

T0 = 1_700_000_000_000  # ms; runs start one second apart in the order below

# Per-epoch histories (3 epochs; epoch 0 is the warm-up).
HISTORIES = {
    "A0": {"val_acc": [0.50, 0.65, 0.70], "elapsed_s": [12, 22, 32], "epoch_time_s": [10, 8, 8], "images_per_s": [100, 200, 220]},
    "A1": {"val_acc": [0.55, 0.72, 0.71], "elapsed_s": [12, 22, 32], "epoch_time_s": [10, 8, 8], "images_per_s": [100, 210, 230]},
    "A2": {"val_acc": [0.60, 0.74, 0.74], "elapsed_s": [12, 22, 32], "epoch_time_s": [10, 8, 8], "images_per_s": [100, 190, 210]},
    "A_cuda": {"val_acc": [0.60, 0.70, 0.71], "elapsed_s": [6, 8, 10], "epoch_time_s": [5, 1, 1], "images_per_s": [1000, 3000, 3200]},
    "A_t1": {"val_acc": [0.50, 0.60, 0.70], "elapsed_s": [22, 40, 58], "epoch_time_s": [20, 16, 16], "images_per_s": [50, 100, 110]},
    "A_killed": {"val_acc": [0.40], "elapsed_s": [12], "epoch_time_s": [10], "images_per_s": [100]},
    "B": {"val_acc": [0.80, 0.88, 0.90], "elapsed_s": [30, 60, 90], "epoch_time_s": [25, 25, 25], "images_per_s": [80, 90, 100]},
    "C": {"val_acc": [0.40, 0.55, 0.60], "elapsed_s": [5, 10, 15], "epoch_time_s": [4, 4, 4], "images_per_s": [400, 500, 600]},
    "D": {"val_acc": [0.30, 0.35, 0.38], "elapsed_s": [3, 6, 9], "epoch_time_s": [2, 2, 2], "images_per_s": [900, 1000, 1100]},
    "other": {"val_acc": [0.5, 0.6], "elapsed_s": [1, 2], "epoch_time_s": [1, 1], "images_per_s": [10, 20]},
}

# (key, name, model, optimizer, lr, schedule, hash, device, threads, seed, status, summary, extra tags)
RUNS = [
    ("A0", "cnn_simple adam lr=0.001", "cnn_simple", "adam", "0.001", "constant", "hA", "cpu", "2", 0, "FINISHED",
     {"best_val_acc": 0.70, "test_acc": 0.69, "train_time_s": 100.0}, {}),
    ("A1", "cnn_simple adam lr=0.001", "cnn_simple", "adam", "0.001", "constant", "hA", "cpu", "2", 1, "FINISHED",
     {"best_val_acc": 0.72, "test_acc": 0.71, "train_time_s": 110.0}, {}),
    ("A2", "cnn_simple adam lr=0.001", "cnn_simple", "adam", "0.001", "constant", "hA", "cpu", "2", 2, "FINISHED",
     {"best_val_acc": 0.74, "test_acc": 0.73, "train_time_s": 120.0}, {}),
    ("A_cuda", "cnn_simple adam lr=0.001", "cnn_simple", "adam", "0.001", "constant", "hA", "cuda:0", "2", 0,
     "FINISHED", {"best_val_acc": 0.71, "test_acc": 0.70, "train_time_s": 7.0}, {"device_name": "NVIDIA A100"}),
    ("A_t1", "cnn_simple adam lr=0.001 t1", "cnn_simple", "adam", "0.001", "constant", "hA", "cpu", "1", 0,
     "FINISHED", {"best_val_acc": 0.70, "test_acc": 0.69, "train_time_s": 200.0}, {}),
    ("A_killed", "cnn_simple adam lr=0.001", "cnn_simple", "adam", "0.001", "constant", "hA", "cpu", "2", 3,
     "KILLED", {}, {"failure_reason": "KeyboardInterrupt: SIGINT"}),
    ("B", '=HYPERLINK("http://x","y")', "resnet9", "sgd", "0.1", "onecycle", "hB", "cpu", "2", 0, "FINISHED",
     {"best_val_acc": 0.90, "test_acc": 0.89, "train_time_s": 3725.0},
     {"reported_acc": "0.91", "experiment_preset": "resnet9_airbench"}),
    ("C", "<script>alert(1)</script>", "lenet", "sgd", "0.01", "step", "hC", "cpu", "2", 0, "FINISHED",
     {"best_val_acc": 0.60, "train_time_s": 50.0}, {}),
    ("D", "mlp | pipe", "mlp", "adam", "0.0003", "cosine", "hD", "cpu", "2", 0, "FINISHED",
     {"best_val_acc": math.nan, "test_acc": 0.40, "train_time_s": 20.0}, {}),
    ("E", "cnn_adv sgd lr=10", "cnn_adv", "sgd", "10", "constant", "hE", "cpu", "2", 0, "FAILED", {},
     {"failure_reason": "FloatingPointError: non-finite loss (nan) at epoch 1\nsee traceback.txt"}),
]
N_PARAMS = {"cnn_simple": 62006, "resnet9": 6_573_130, "lenet": 61706, "mlp": 1_738_890, "cnn_adv": 300_000}
SWEEP_MEMBERS = {"A0", "A1", "A2", "A_killed"}
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

# misclassified.csv (index, true, pred) per run; the top three runs by best_val_acc are B, A2, A1.
MISCLASSIFIED = {
    "B": [(1, 3, 5), (2, 0, 8), (4, 9, 1), (7, 6, 2)],
    "A2": [(1, 3, 5), (2, 0, 1), (5, 2, 4)],
    "A1": [(1, 3, 2), (2, 0, 8), (4, 9, 1)],
    "A0": [(0, 1, 9), (6, 4, 7)],
}


@dataclass
class SeededStore:
    uri: str
    root: Path
    ids: dict[str, str] = field(default_factory=dict)


def _png_bytes(color: tuple[int, int, int], size=(64, 32)) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _log_artifacts(client, run_id: str, key: str, tmp: Path) -> None:
    rows = MISCLASSIFIED.get(key)
    if rows is None:
        return
    folder = tmp / key
    (folder / "misclassified").mkdir(parents=True)
    lines = ["index,true,pred,confidence,true_name,pred_name"]
    lines += [f"{i},{t},{p},0.8,{CLASSES[t]},{CLASSES[p]}" for i, t, p in rows]
    (folder / "misclassified.csv").write_text("\n".join(lines) + "\n")
    client.log_artifact(run_id, str(folder / "misclassified.csv"))
    # Two epochs' grids; the report must pick the last one (epoch_002, green).
    (folder / "misclassified" / "epoch_000.png").write_bytes(_png_bytes((200, 30, 30)))
    (folder / "misclassified" / "epoch_002.png").write_bytes(_png_bytes((30, 160, 60)))
    client.log_artifacts(run_id, str(folder / "misclassified"), "misclassified")


def seed_store(root: Path) -> SeededStore:
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    store = SeededStore(uri, root)
    exp = client.create_experiment("cifar_sweep", artifact_location=(root / "artifacts").as_uri())
    client.create_experiment("empty_exp", artifact_location=(root / "artifacts").as_uri())
    other = client.create_experiment("other", artifact_location=(root / "artifacts").as_uri())

    parent = client.create_run(exp, start_time=T0, run_name="sweep sw1",
                               tags={"sweep_parent": "true", "sweep_id": "sw1"})
    client.set_terminated(parent.info.run_id, "FINISHED", end_time=T0 + 100_000)
    store.ids["parent"] = parent.info.run_id

    for i, (key, name, model, opt, lr, sched, chash, device, threads, seed, status, summary, extra) in enumerate(RUNS):
        start = T0 + 1000 * (i + 1)
        tags = {
            "model": model, "optimizer": opt, "schedule": sched, "data": "folder", "device": device,
            "device_name": "Test CPU", "threads": threads, "precision": "fp32", "config_hash": chash,
            "n_params": str(N_PARAMS[model]), "warmup_epoch": "0", "job_num": str(i),
        }
        tags.update(extra)
        if key in SWEEP_MEMBERS:
            tags.update({"sweep_id": "sw1", "mlflow.parentRunId": parent.info.run_id})
        run = client.create_run(exp, start_time=start, run_name=name, tags=tags)
        run_id = run.info.run_id
        params = {
            "model._target_": f"cifar_sweep.models.{model}", "optimizer._target_": f"torch.optim.{opt}",
            "optimizer.lr": lr, "optimizer.weight_decay": "0.0", "schedule._target_": sched,
            "trainer.epochs": "3", "trainer.batch_size": "128", "trainer.device": device,
            "trainer.threads": threads, "trainer.precision": "fp32", "seed": str(seed), "data.val_size": "5000",
        }
        metrics = [
            Metric(k, float(v), start + 10 + step, step)
            for k, values in HISTORIES.get(key, {}).items() for step, v in enumerate(values)
        ]
        metrics += [Metric(k, float(v), start + 50, 0) for k, v in summary.items()]
        client.log_batch(run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()],
                         tags=[RunTag("mlflow.note.content", f"seeded run {key}")])
        _log_artifacts(client, run_id, key, root / "src")
        client.set_terminated(run_id, status, end_time=start + 500)
        store.ids[key] = run_id

    run = client.create_run(other, start_time=T0, run_name="other run",
                            tags={"model": "cnn_simple", "config_hash": "hO", "device": "cpu", "threads": "2"})
    client.log_batch(run.info.run_id, metrics=[
        Metric(k, float(v), T0 + step, step) for k, values in HISTORIES["other"].items() for step, v in enumerate(values)
    ] + [Metric("best_val_acc", 0.6, T0 + 9, 0), Metric("test_acc", 0.55, T0 + 9, 0)])
    client.set_terminated(run.info.run_id, "FINISHED")
    store.ids["other"] = run.info.run_id
    return store


_CACHE: dict[str, SeededStore] = {}


@pytest.fixture(scope="module")
def seeded_store(tmp_path_factory) -> SeededStore:
    """Built once per session (migrations are slow), shared read-only."""
    if "store" not in _CACHE:
        _CACHE["store"] = seed_store(tmp_path_factory.mktemp("seeded_store"))
    return _CACHE["store"]
