"""The run's identity, its checkpoint folder and its lock, and resuming from a damaged checkpoint."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from cifar_sweep.training.resume import FolderLock, RunIdentity, RunInUse, safe_folder_name


@pytest.mark.parametrize("name", ["../../../escape", "a/b", "..", "", "2024", "ünïcode name", "/abs"])
def test_any_experiment_name_maps_to_one_folder_inside_runs(tmp_path, name):
    folder = RunIdentity.of({"seed": 0, "trainer": {}}, "cpu", tmp_path, name).checkpoint_dir
    assert folder.resolve().is_relative_to((tmp_path / "checkpoints").resolve())
    assert folder.parent.parent == tmp_path / "checkpoints" and "/" not in safe_folder_name(name)


def test_names_that_differ_get_different_folders():
    assert safe_folder_name("a/b") != safe_folder_name("a_b") and safe_folder_name("plain") == "plain"


def test_a_checkpoint_folder_belongs_to_one_live_process(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from cifar_sweep.training.resume import FolderLock; "
        f"lock = FolderLock(Path({str(tmp_path)!r})); lock.acquire(); print('held', flush=True); time.sleep(30)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunInUse, match=f"pid {holder.pid}"):
            FolderLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    deadline = time.time() + 10
    while True:  # the kernel drops a dead process's lock
        try:
            FolderLock(tmp_path).acquire()
            break
        except RunInUse:
            assert time.time() < deadline
            time.sleep(0.1)


def test_damaged_last_checkpoint_logs_each_epoch_once(compose_cfg, tmp_path, monkeypatch):
    import cifar_sweep.train as train_mod

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    overrides = ["data=synthetic", "model=logreg", "trainer.epochs=4", f"tracking.uri={uri}",
                 f"paths.runs={tmp_path}/runs"]
    real = train_mod.log_misclassified_grid

    def interrupt_after_epoch_2(tracker, images, result, classes, tiles, epoch):
        real(tracker, images, result, classes, tiles, epoch)
        if epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "log_misclassified_grid", interrupt_after_epoch_2)
    with pytest.raises(SystemExit):
        train_mod.train(compose_cfg(overrides))
    folders = list(Path(tmp_path, "runs", "checkpoints").glob("*/*"))
    assert len(folders) == 1
    (folders[0] / "last.pt").write_bytes(b"damaged")  # resume falls back to prev.pt (after epoch 1)
    monkeypatch.setattr(train_mod, "log_misclassified_grid", real)
    train_mod.train(compose_cfg(overrides))

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("cifar_sweep").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["resumed_from_epoch"] == "1"
    for key in ("val_acc", "train_loss", "epoch_time_s"):
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == [0, 1, 2, 3]
