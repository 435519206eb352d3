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
    from cifar_sweep.tracking import epoch_log

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    overrides = ["data=synthetic", "model=logreg", "trainer.epochs=4", f"tracking.uri={uri}",
                 f"paths.runs={tmp_path}/runs"]
    real = epoch_log.log_misclassified_grid

    def interrupt_after_epoch_2(tracker, images, result, classes, tiles, epoch):
        real(tracker, images, result, classes, tiles, epoch)
        if epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(epoch_log, "log_misclassified_grid", interrupt_after_epoch_2)
    with pytest.raises(SystemExit):
        train_mod.train(compose_cfg(overrides))
    folders = list(Path(tmp_path, "runs", "checkpoints").glob("*/*"))
    assert len(folders) == 1
    (folders[0] / "last.pt").write_bytes(b"damaged")  # resume falls back to prev.pt (after epoch 1)
    monkeypatch.setattr(epoch_log, "log_misclassified_grid", real)
    train_mod.train(compose_cfg(overrides))

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("cifar_sweep").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["resumed_from_epoch"] == "1"
    for key in ("val_acc", "train_loss", "epoch_time_s"):
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == [0, 1, 2, 3]


def _identity(compose_cfg, overrides, device, precision, runs):
    from omegaconf import OmegaConf

    resolved = OmegaConf.to_container(compose_cfg(overrides), resolve=True)
    return RunIdentity.of(resolved, device, runs, "cifar_sweep", precision=precision)


def test_device_kind_compile_and_precision_are_in_the_identity_but_not_in_the_hash(compose_cfg, tmp_path):
    base = ["data=synthetic", "model=logreg"]
    gpu = _identity(compose_cfg, base, "cuda:0", "bf16", tmp_path)
    cpu = _identity(compose_cfg, base, "cpu", "fp32", tmp_path)
    compiled = _identity(compose_cfg, [*base, "trainer.compile=true"], "cuda:0", "bf16", tmp_path)
    other_gpu = _identity(compose_cfg, base, "cuda:1", "bf16", tmp_path)
    assert gpu.config_hash == cpu.config_hash == compiled.config_hash  # seeds fold, devices pair
    assert len({gpu.checkpoint_dir, cpu.checkpoint_dir, compiled.checkpoint_dir}) == 3
    assert gpu.checkpoint_dir.name == f"{gpu.config_hash}-seed0-cuda-bf16"
    assert compiled.checkpoint_dir.name.endswith("-cuda-bf16-compiled") and compiled.compile and not gpu.compile
    assert other_gpu.checkpoint_dir == gpu.checkpoint_dir  # another GPU of the same kind continues the run
    assert gpu.record()["setup"] == {"device": "cuda", "compile": "False", "precision": "bf16"}


def _gpu_checkpoint(identity, run_id: str, epochs: int = 1) -> None:
    """What a GPU run killed after its first epoch leaves: its loader's generator is a 16-byte CUDA state."""
    import torch

    from cifar_sweep.training import checkpoint as ckpt

    rng = ckpt.rng_state(torch.Generator().manual_seed(0))
    rng |= {"generator": torch.zeros(16, dtype=torch.uint8), "generator_device": "cuda:0",
            "cuda": torch.zeros(16, dtype=torch.uint8)}
    history = [{"val_acc": 0.5, "elapsed_s": 1.0, "epoch_time_s": 0.5}] * epochs
    ckpt.save(identity.checkpoint_dir, {"model": {}, "rng": rng, "history": history, "epoch": epochs - 1,
                                        "run_id": run_id, **identity.record()})


def test_a_gpu_checkpoint_is_refused_on_the_cpu_naming_both_devices(compose_cfg, tmp_path):
    from cifar_sweep.training.resume import ResumeRefused, find_resume

    overrides = ["data=synthetic", "model=logreg"]
    gpu = _identity(compose_cfg, overrides, "cuda:0", "bf16", tmp_path)
    cpu = _identity(compose_cfg, overrides, "cpu", "fp32", tmp_path)
    _gpu_checkpoint(gpu, "r1")
    assert find_resume(cpu, "auto", lambda run_id: "RUNNING") is None  # its own folder: nothing to continue
    with pytest.raises(ResumeRefused, match=r"was made on cuda:0 and this run is on cpu: a run continues on the kind "
                                            r"of device it started on\. Relaunch with trainer.device=cuda") as err:
        find_resume(cpu, str(gpu.checkpoint_dir), lambda run_id: "RUNNING")
    assert len(err.value.one_line().splitlines()) == 1
    # A checkpoint from before setups were recorded: its generator's device still says where it was made.
    from cifar_sweep.training import checkpoint as ckpt

    state = ckpt.read(gpu.checkpoint_dir / "last.pt")
    state.pop("setup"), state.pop("device")
    ckpt.save(gpu.checkpoint_dir, {k: v for k, v in state.items() if k != "format_version"})
    with pytest.raises(ResumeRefused, match="was made on cuda and this run is on cpu"):
        find_resume(cpu, str(gpu.checkpoint_dir), lambda run_id: "RUNNING")
    compiled = _identity(compose_cfg, [*overrides, "trainer.compile=true"], "cuda:0", "bf16", tmp_path)
    _gpu_checkpoint(gpu, "r1")
    with pytest.raises(ResumeRefused, match=r"made with trainer.compile False \(now True\)"):
        find_resume(compiled, str(gpu.checkpoint_dir), lambda run_id: "RUNNING")


@pytest.mark.cli
def test_a_killed_gpu_run_relaunched_on_the_cpu_is_a_run_of_its_own(compose_cfg, tmp_path):
    """The CLI end to end: the CPU relaunch neither reopens the GPU run nor mixes its epochs into it."""
    from helpers import run_cli

    from cifar_sweep.tracking.store import ensure_experiment, open_store

    overrides = ["data=synthetic", "data.n_train=256", "data.val_size=64", "data.n_test=64", "model=logreg",
                 "trainer.epochs=2", "trainer.threads=1", "trainer.progress=false", "diagnostics.embedding=false"]
    uri = f"sqlite:///{tmp_path}/runs/mlflow.db"
    client = open_store(uri, create=True)
    gpu_run = client.create_run(ensure_experiment(uri, "cifar_sweep", client), tags={"device": "cuda:0"}).info.run_id
    gpu = _identity(compose_cfg, overrides, "cuda:0", "bf16", tmp_path / "runs")
    _gpu_checkpoint(gpu, gpu_run)

    res = run_cli([*overrides, "trainer.device=cpu"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    runs = {r.info.run_id: r for r in client.search_runs([client.get_experiment_by_name("cifar_sweep").experiment_id])}
    assert runs[gpu_run].info.status == "RUNNING" and "val_acc" not in runs[gpu_run].data.metrics  # untouched
    (cpu_run,) = [r for rid, r in runs.items() if rid != gpu_run]
    assert cpu_run.info.status == "FINISHED" and cpu_run.data.tags["device"] == "cpu"
    assert "resumed_from_epoch" not in cpu_run.data.tags
    assert (gpu.checkpoint_dir / "last.pt").exists()  # the GPU run can still be continued on a GPU

    res = run_cli([*overrides, "trainer.device=cpu", f"resume={gpu.checkpoint_dir}"], tmp_path)
    assert res.returncode != 0
    assert "was made on cuda:0 and this run is on cpu" in res.stderr and "CPUGeneratorImplState" not in res.stderr
    assert len(client.search_runs([client.get_experiment_by_name("cifar_sweep").experiment_id])) == 2  # none opened
