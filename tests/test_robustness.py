"""Nothing lost, nothing let in: signals, bit-exact resume, reaping, bad configs, bad stores.

Signals and resume go through the real CLI in subprocesses (marked `cli`), as a user or a scheduler
would send them; an overlong config value and an out-of-memory error are checked in process.
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
import torch
from mlflow.tracking import MlflowClient

from helpers import run_cli, signal_after_first_epoch

TINY = ["data=synthetic", "data.n_train=800", "data.val_size=200", "data.n_test=200", "model=cnn_simple",
        "trainer.threads=1", "data.augment.flip=true",
        "data.augment.crop_padding=2", "trainer.epochs=3"]


def _uri(home: Path) -> str:
    return f"sqlite:///{home}/runs/mlflow.db"


def _runs(uri: str):
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=["cifar_sweep"])


def _interrupt_after_epoch0(home: Path, sig: int, extra=()) -> tuple[int, float, str]:
    return signal_after_first_epoch(home, [*TINY, *extra], sig)


def _weights(uri: str, run_id: str, dest: Path) -> dict:
    path = MlflowClient(uri).download_artifacts(run_id, "checkpoint/last.pt", str(dest))
    return torch.load(path, weights_only=True)["model"]


def _history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key))


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.cli
def test_signal_ends_run_killed(tmp_path, sig, code):
    rc, seconds, out = _interrupt_after_epoch0(tmp_path, sig)
    assert rc == code, out[-2000:]
    assert seconds < 10
    run = _runs(_uri(tmp_path)).iloc[0]
    assert run["status"] == "KILLED"
    assert ("SIGINT" if sig == signal.SIGINT else "SIGTERM") in run["tags.failure_reason"]


@pytest.mark.cli
def test_resume_is_bit_exact_into_the_same_run(tmp_path):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    straight.mkdir(), broken.mkdir()
    res = run_cli(TINY, straight)
    assert res.returncode == 0, res.stderr[-2000:]

    rc, _, out = _interrupt_after_epoch0(broken, signal.SIGINT)
    assert rc == 130, out[-2000:]
    ckpt_dirs = list((broken / "runs" / "checkpoints" / "cifar_sweep").iterdir())
    assert len(ckpt_dirs) == 1 and (ckpt_dirs[0] / "last.pt").exists()

    # A checkpoint from another config is refused, naming the differing key.
    res = run_cli([*TINY, "optimizer.lr=0.01", f"resume={ckpt_dirs[0]}"], broken)
    assert res.returncode != 0 and "optimizer.lr" in res.stderr and "differing keys" in res.stderr

    res = run_cli(TINY, broken)  # the same command again: continues the killed run
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resumed from" in res.stdout + res.stderr

    a, b = _runs(_uri(straight)), _runs(_uri(broken))
    assert len(b) == 1 and b.iloc[0]["status"] == "FINISHED"  # the same MLflow run, not a second one
    ra, rb = a.iloc[0].run_id, b.iloc[0].run_id
    wa, wb = _weights(_uri(straight), ra, tmp_path / "wa"), _weights(_uri(broken), rb, tmp_path / "wb")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    for key in ["train_loss", "train_acc", "val_loss", "val_acc", "lr"]:
        ha, hb = _history(_uri(straight), ra, key), _history(_uri(broken), rb, key)
        assert [s for s, _ in hb] == [0, 1, 2], key  # exactly one point per epoch
        assert ha == hb, key
    assert b.iloc[0]["metrics.test_acc"] == a.iloc[0]["metrics.test_acc"]


@pytest.mark.cli
def test_hard_killed_run_is_reaped(tmp_path):
    rc, _, _ = _interrupt_after_epoch0(tmp_path, signal.SIGKILL)
    assert rc == -signal.SIGKILL
    assert _runs(_uri(tmp_path)).iloc[0]["status"] == "RUNNING"  # nobody was alive to end it
    res = run_cli(["--tracking-uri", _uri(tmp_path)], tmp_path, module="cifar_sweep.commands.reap")
    assert res.returncode == 0 and "marked KILLED" in res.stdout
    run = _runs(_uri(tmp_path)).iloc[0]
    assert run["status"] == "KILLED" and run["tags.failure_reason"].startswith("reaped: process")


@pytest.mark.cli
def test_target_outside_allowlist_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    res = run_cli(["data=synthetic", "model._target_=os.system", f"+model.command=touch {marker}"], tmp_path)
    assert res.returncode != 0 and "not allowed" in res.stderr and "os.system" in res.stderr
    assert not marker.exists()
    assert not (tmp_path / "runs" / "mlflow.db").exists()  # refused before anything started


@pytest.mark.parametrize("override, named", [
    ("trainer.epochs=-1", "trainer.epochs"),
    ("optimizer.lr=abc", "optimizer.lr"),
    ("trainer.epochz=3", "epochz"),
    ("data.val_size=-5", "data.val_size"),
])
@pytest.mark.cli
def test_bad_config_fails_before_start_naming_the_key(tmp_path, override, named):
    res = run_cli(["data=synthetic", override], tmp_path, timeout=120)
    assert res.returncode != 0 and named in res.stderr
    assert not (tmp_path / "runs" / "mlflow.db").exists()


@pytest.mark.cli
def test_unreachable_server_fails_fast(tmp_path):
    start = time.perf_counter()
    res = run_cli(["data=synthetic", "tracking.uri=http://127.0.0.1:9"], tmp_path, timeout=120)
    assert res.returncode != 0 and "unreachable" in res.stderr and "127.0.0.1:9" in res.stderr
    assert time.perf_counter() - start < 30  # interpreter start-up included; the check itself takes < 5 s


@pytest.mark.cli
def test_unusable_store_fails_at_start(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    res = run_cli(["data=synthetic", f"tracking.uri=sqlite:///{blocker}/mlflow.db"], tmp_path, timeout=120)
    assert res.returncode != 0 and "cannot create the folder of the tracking store" in res.stderr
    assert "epoch 0" not in res.stdout


@pytest.mark.cli
def test_stray_mlflow_env_does_not_capture_jobs(tmp_path):
    uri = _uri(tmp_path)
    (tmp_path / "runs").mkdir()
    client = MlflowClient(uri)
    other = client.create_experiment("unrelated")
    stray = client.create_run(other).info.run_id
    res = run_cli(["data=synthetic", "model=logreg", "trainer.epochs=1"], tmp_path,
                  env_extra={"MLFLOW_RUN_ID": stray, "MLFLOW_EXPERIMENT_ID": other})
    assert res.returncode == 0, res.stderr[-2000:]
    assert client.get_run(stray).data.metrics == {}  # untouched
    runs = _runs(uri)
    assert len(runs) == 1 and runs.iloc[0]["status"] == "FINISHED"


def test_overlong_config_value_goes_to_an_artifact(compose_cfg, tmp_path):
    from cifar_sweep.train import train

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = compose_cfg(["data=synthetic", "model=logreg", "trainer.epochs=1", f"tracking.uri={uri}",
                       "tracking.run_name=long", "reported.source=" + "x" * 7000])
    train(cfg)
    run = _runs(uri).iloc[0]
    assert "too long for a param" in run["params.reported.source"]
    files = [a.path for a in MlflowClient(uri).list_artifacts(run.run_id)]
    assert "params_too_long.json" in files


@pytest.mark.parametrize("error", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    # What the CPU allocator raises: a plain RuntimeError.
    RuntimeError("[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't allocate memory: "
                 "you tried to allocate 2490368000 bytes. Error code 12 (Cannot allocate memory)"),
], ids=["cuda", "cpu"])
def test_out_of_memory_names_the_batch_size(compose_cfg, tmp_path, monkeypatch, error):
    import cifar_sweep.training.loop as fit_mod
    import cifar_sweep.train as train_mod

    def boom(*args, **kwargs):
        raise error

    monkeypatch.setattr(fit_mod, "train_one_epoch", boom)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = compose_cfg(["data=synthetic", "model=logreg", "trainer.batch_size=64", f"tracking.uri={uri}"])
    with pytest.raises(MemoryError, match="trainer.batch_size=64"):
        train_mod.train(cfg)
    run = _runs(uri).iloc[0]
    assert run["status"] == "FAILED" and "batch_size=64" in run["tags.failure_reason"]


# -- a full disk: the kernel's ENOSPC on the checkpoint write (tests/disk_full_helper.py) ------------

FULL = ["data=synthetic", "data.n_train=400", "data.val_size=100", "data.n_test=100", "model=logreg",
        "trainer.threads=1", "trainer.epochs=3", "tracking.misclassified_grid=false"]
HELPER = Path(__file__).with_name("disk_full_helper.py")


def _on_full_disk(home: Path, mode: str, full_at: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "CIFAR_SWEEP_HOME": str(home)}
    return subprocess.run([sys.executable, str(HELPER), mode, str(full_at), *FULL], cwd=home, env=env,
                          capture_output=True, text=True, timeout=300)


def _checkpoint_folder(home: Path) -> Path:
    (folder,) = (home / "runs" / "checkpoints" / "cifar_sweep").iterdir()
    return folder


@pytest.mark.cli
def test_full_checkpoint_disk_fails_the_run_with_one_clear_reason(tmp_path):
    res = _on_full_disk(tmp_path, "checkpoints", full_at=3)  # epochs 0 and 1 saved, epoch 2's write fails
    out = res.stdout + res.stderr
    folder = _checkpoint_folder(tmp_path)
    assert res.returncode == 1, out[-3000:]
    assert res.stderr.strip().splitlines()[-1].startswith(f"cifar-sweep: no space left on device: {folder}; free")
    assert "Traceback" not in out and "inline_container" not in out
    run = _runs(_uri(tmp_path)).iloc[0]
    assert run["status"] == "FAILED" and run["tags.failure_reason"] == f"no space left on device: {folder}"
    assert sorted(p.name for p in folder.iterdir() if p.suffix == ".pt" or ".tmp" in p.name) == ["last.pt", "prev.pt"]
    assert torch.load(folder / "last.pt", weights_only=True)["epoch"] == 1
    assert torch.load(folder / "prev.pt", weights_only=True)["epoch"] == 0
    assert [s for s, _ in _history(_uri(tmp_path), run.run_id, "val_acc")] == [0, 1]

    res = run_cli(FULL, tmp_path)  # space freed: the same command resumes the run
    assert res.returncode == 0, res.stderr[-2000:]
    run = _runs(_uri(tmp_path)).iloc[0]
    assert run["status"] == "FINISHED" and run["tags.resumed_from_epoch"] == "1"
    assert [s for s, _ in _history(_uri(tmp_path), run.run_id, "val_acc")] == [0, 1, 2]


@pytest.mark.cli
def test_run_whose_end_the_full_store_refused_is_reaped_with_its_reason(tmp_path):
    res = _on_full_disk(tmp_path, "everything", full_at=2)
    out = res.stdout + res.stderr
    folder = _checkpoint_folder(tmp_path)
    assert res.returncode == 1, out[-3000:]
    assert "Traceback" not in out and "Logging error" not in out, out[-3000:]
    assert out.count("could not mark run") == 1 and out.count("no space left on device") == 1, out[-3000:]
    assert not list(folder.glob(".last.pt.*"))
    assert torch.load(folder / "last.pt", weights_only=True)["epoch"] == 0
    run = _runs(_uri(tmp_path)).iloc[0]
    assert run["status"] == "RUNNING"  # the store could take nothing more

    res = run_cli(["--tracking-uri", _uri(tmp_path)], tmp_path, module="cifar_sweep.commands.reap")
    assert res.returncode == 0 and f"marked FAILED: {run.run_id}" in res.stdout, res.stdout + res.stderr
    run = _runs(_uri(tmp_path)).iloc[0]
    assert run["status"] == "FAILED"
    assert run["tags.failure_reason"].startswith(f"reaped: no space left on device: {folder} (left by its process")
