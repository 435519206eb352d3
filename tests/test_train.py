"""One run end to end: the composed config, the CLI, and everything the MLflow contract names."""

from __future__ import annotations

import json
import re
import time

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from cifar_sweep.train import train
from helpers import JPEG_ARCHIVE, run_cli

PER_EPOCH = ["train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time_s", "images_per_s"]
SUMMARY = ["best_val_acc", "best_epoch", "test_acc", "test_loss", "train_time_s", "first_epoch_time_s",
           "steady_epoch_time_s", "total_eval_time_s"]
TAGS = ["model", "optimizer", "schedule", "data", "device", "device_name", "threads", "precision",
        "config_hash", "n_params"]
ARTIFACTS = ["config.yaml", "model_summary.txt", "epochs.jsonl", "misclassified.csv", "checkpoint/last.pt"]


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    out = []
    for item in client.list_artifacts(run_id, path):
        out += _artifacts(client, run_id, item.path) if item.is_dir else [item.path]
    return out


def _runs(uri: str, experiment: str = "cifar_sweep"):
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=[experiment], order_by=["start_time ASC"])


def test_config_has_the_contract_keys(compose_cfg):
    cfg = compose_cfg()
    for key in ["seed", "trainer.epochs", "trainer.batch_size", "trainer.device", "trainer.precision",
                "trainer.threads", "trainer.compile", "data.root", "data.val_size", "data.classes",
                "data.augment", "tracking.uri", "tracking.experiment"]:
        node = cfg
        for part in key.split("."):
            assert part in node, key
            node = node[part]
    assert cfg.tracking.uri.startswith("sqlite:////") and cfg.tracking.uri.endswith("/runs/mlflow.db")


@pytest.mark.cli
def test_cli_run_logs_the_contract(tmp_path):
    """The real CLI in a subprocess on synthetic data; then read the run back from the store."""
    res = run_cli(["data=synthetic", "trainer.epochs=3", "model=cnn_simple", "data.augment.flip=true"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    uri = f"sqlite:///{tmp_path}/runs/mlflow.db"
    runs = _runs(uri)
    assert len(runs) == 1
    run = runs.iloc[0]
    assert run["status"] == "FINISHED"
    client = MlflowClient(uri)
    for key in PER_EPOCH:
        steps = [m.step for m in client.get_metric_history(run.run_id, key)]
        assert sorted(steps) == [0, 1, 2], key
    for key in SUMMARY:
        assert f"metrics.{key}" in runs.columns and run[f"metrics.{key}"] == run[f"metrics.{key}"], key
    assert run["metrics.test_acc"] > 0.3  # synthetic data is learnable: far above 10% chance
    assert any(c.startswith("metrics.class_acc/") for c in runs.columns)
    # Where its seconds went: the phases add up to the whole, and training is among them.
    phases = {k: run[f"metrics.seconds/{k}"] for k in ("setup", "data", "training", "evaluation", "diagnostics",
                                                       "logging", "other")}
    assert phases["training"] > 0 and abs(sum(phases.values()) - run["metrics.seconds/total"]) < 0.01
    for tag in TAGS:
        assert run[f"tags.{tag}"], tag
    assert run["tags.model"] == "cnn_simple" and run["tags.data"] == "synthetic"
    assert run["tags.n_params"] == "42442"
    assert run["params.trainer.epochs"] == "3" and run["params.optimizer.lr"] == "0.001"
    files = _artifacts(client, run.run_id)
    for name in ARTIFACTS:
        assert name in files, name
    assert any(f.startswith("misclassified/epoch_") for f in files)
    local = client.download_artifacts(run.run_id, "epochs.jsonl", str(tmp_path))
    lines = [json.loads(line) for line in open(local).read().splitlines()]
    assert [line["epoch"] for line in lines] == [0, 1, 2]
    assert all("val_acc" in line and line["time"] > 0 for line in lines)
    assert '{"epoch": 2, "val_acc"' in res.stdout  # printed as the exercise did
    assert "Trainable params: 42,442" in res.stdout


def test_failing_run_is_failed_with_reason(compose_cfg, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = compose_cfg(["data=synthetic", "model=logreg", "optimizer=sgd", "optimizer.lr=1e38",
                       f"tracking.uri={uri}", "trainer.epochs=2"])
    with pytest.raises(FloatingPointError, match="non-finite loss at epoch 0 step"):
        train(cfg)
    run = _runs(uri).iloc[0]
    assert run["status"] == "FAILED"
    assert run["tags.failure_reason"].startswith("NonFiniteLossError: non-finite loss at epoch 0 step")
    assert "traceback.txt" in _artifacts(MlflowClient(uri), run.run_id)


def test_error_after_start_marks_failed(compose_cfg, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = compose_cfg(["data=synthetic", "data.classes=[no_such_class]", f"tracking.uri={uri}"])
    with pytest.raises(Exception):
        train(cfg)
    run = _runs(uri).iloc[0]
    assert run["status"] == "FAILED" and "no_such_class" in run["tags.failure_reason"]


@pytest.mark.cli
def test_unknown_model_lists_choices(tmp_path):
    res = run_cli(["model=nonexistent"], tmp_path, timeout=120)
    assert res.returncode != 0
    assert "nonexistent" in res.stderr and "cnn_simple" in res.stderr and "logreg" in res.stderr


@pytest.mark.cli
def test_missing_folder_fails_fast_naming_the_path(tmp_path):
    start = time.perf_counter()
    res = run_cli(["data=folder", "data.root=/no/such/path"], tmp_path, timeout=120)
    assert res.returncode != 0
    assert "/no/such/path" in res.stderr
    # Interpreter + torch import dominate; the data check itself is instant.
    assert time.perf_counter() - start < 30


def test_resumed_run_reports_every_epoch_in_its_totals(compose_cfg, tmp_path, monkeypatch, caplog):
    """Training time and total both cover the epochs of the interrupted process, so total >= training."""
    import logging

    from cifar_sweep.tracking import epoch_log
    from cifar_sweep.training.progress import EpochProgress

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    overrides = ["data=synthetic", "model=logreg", "trainer.epochs=4", "trainer.limit_train_batches=2",
                 f"tracking.uri={uri}", f"paths.runs={tmp_path}/runs", "diagnostics.embedding=false"]
    real_iter, real_grid = EpochProgress.__iter__, epoch_log.log_misclassified_grid

    def slow_iter(self):  # the first process trains slowly: 2 x 2 s per epoch
        for batch in real_iter(self):
            time.sleep(2.0)
            yield batch

    def interrupt_after_epoch_2(tracker, images, result, classes, tiles, epoch):
        real_grid(tracker, images, result, classes, tiles, epoch)
        if epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(EpochProgress, "__iter__", slow_iter)
    monkeypatch.setattr(epoch_log, "log_misclassified_grid", interrupt_after_epoch_2)
    with pytest.raises(SystemExit):
        train(compose_cfg(overrides))
    monkeypatch.setattr(EpochProgress, "__iter__", real_iter)
    monkeypatch.setattr(epoch_log, "log_misclassified_grid", real_grid)
    with caplog.at_level(logging.INFO, logger="cifar_sweep"):
        train(compose_cfg(overrides))
    text = "\n".join(r.getMessage() for r in caplog.records)
    training = float(re.search(r"training ([0-9.]+) s over 4 epochs \(first ", text).group(1))
    total, here = (float(v) for v in re.search(r"total ([0-9.]+) s \(([0-9.]+) s in this process, resumed\)",
                                                text).groups())
    assert training >= 12.0  # three slow epochs came before; this process trained only the fourth
    assert total >= training and total >= here + 12.0
    run = _runs(uri).iloc[0]
    assert run["metrics.train_time_s"] == pytest.approx(training, abs=0.05)
    assert run["metrics.first_epoch_time_s"] >= 4.0 and run["metrics.steady_epoch_time_s"] >= 4.0


@pytest.mark.parametrize("override, message", [
    ("trainer.device=cuda:7", "not available on this machine"),
    ("trainer.epochs=0", "trainer.epochs"),
    ("trainer.precision=fp8", "trainer.precision"),
])
def test_bad_trainer_values_are_named(compose_cfg, tmp_path, override, message):
    cfg = compose_cfg(["data=synthetic", override, f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"])
    with pytest.raises(ValueError, match=message):
        train(cfg)


@pytest.mark.slow
@pytest.mark.skipif(not JPEG_ARCHIVE.exists(), reason="the JPEG copy of CIFAR-10 is not beside the repo")
def test_real_cifar10_two_epochs(compose_cfg, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = compose_cfg(["data=folder", f"data.root={JPEG_ARCHIVE}", "model=cnn_simple", "trainer.epochs=2",
                       f"tracking.uri={uri}"])
    best = train(cfg)
    run = _runs(uri).iloc[0]
    assert run["status"] == "FINISHED"
    assert best > 0.45 and run["metrics.test_acc"] > 0.45  # 2 epochs of a 42k-param CNN
