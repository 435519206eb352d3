"""Checkpoints: atomic, previous kept, damaged ones named, malicious pickles refused."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from cifar_sweep.errors import CifarSweepError
from cifar_sweep.training import checkpoint as ckpt


def _state(value: float = 1.0) -> dict:
    model = torch.nn.Linear(3, 2)
    torch.nn.init.constant_(model.weight, value)
    gen = torch.Generator().manual_seed(0)
    return {"model": model.state_dict(), "rng": ckpt.rng_state(gen), "history": [{"val_acc": 0.5}], "epoch": 0}


def test_save_keeps_previous_and_roundtrips(tmp_path):
    ckpt.save(tmp_path, _state(1.0))
    ckpt.save(tmp_path, _state(2.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "prev.pt"]  # no temp files left
    found = ckpt.latest(tmp_path)
    assert found.path.name == "last.pt" and found.skipped == ()
    assert torch.equal(found.state["model"]["weight"], torch.full((2, 3), 2.0))
    assert torch.equal(ckpt.read(tmp_path / "prev.pt")["model"]["weight"], torch.full((2, 3), 1.0))


def test_rng_roundtrip_reproduces_draws(tmp_path):
    import random

    import numpy as np

    gen = torch.Generator().manual_seed(5)
    state = ckpt.rng_state(gen)
    draws = (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=gen).item())
    ckpt.save(tmp_path, {"model": {}, "rng": state})
    ckpt.restore_rng(ckpt.read(tmp_path / "last.pt")["rng"], gen)
    assert draws == (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=gen).item())


def test_truncated_last_falls_back_to_previous(tmp_path, caplog):
    ckpt.save(tmp_path, _state(1.0))
    ckpt.save(tmp_path, _state(2.0))
    data = (tmp_path / "last.pt").read_bytes()
    (tmp_path / "last.pt").write_bytes(data[: len(data) // 2])
    found = ckpt.latest(tmp_path)
    assert found.path.name == "prev.pt"
    assert "last.pt" in found.skipped[0] and "unreadable" in found.skipped[0]
    assert "last.pt" in caplog.text


def test_all_garbage_is_an_error_never_a_fresh_start(tmp_path):
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "prev.pt").write_bytes(b"")
    with pytest.raises(ckpt.CheckpointError, match="no usable checkpoint") as err:
        ckpt.latest(tmp_path)
    assert "last.pt" in str(err.value) and "prev.pt" in str(err.value)


def test_empty_folder_means_no_checkpoint(tmp_path):
    assert ckpt.latest(tmp_path) is None


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    exploit = _Exploit()
    exploit.marker = marker
    (tmp_path / "last.pt").write_bytes(pickle.dumps({"model": exploit}))
    with pytest.raises(ckpt.CheckpointError, match="unreadable"):
        ckpt.read(tmp_path / "last.pt")
    assert not marker.exists()


def test_non_finite_weights_are_never_saved(tmp_path):
    state = _state(float("nan"))
    with pytest.raises(FloatingPointError, match="non-finite"):
        ckpt.save(tmp_path, state)
    assert not (tmp_path / "last.pt").exists()


def test_differing_keys():
    assert ckpt.differing_keys({"a": "1", "b": "2"}, {"a": "1", "b": "3", "c": "4"}) == ["b", "c"]


def test_full_disk_names_the_folder_and_leaves_the_earlier_checkpoints(tmp_path):
    ckpt.save(tmp_path, _state(1.0))
    ckpt.save(tmp_path, _state(2.0))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    # The temporary file is /dev/full: the kernel answers ENOSPC to the write, as on a full disk.
    os.symlink("/dev/full", tmp_path / f".last.pt.{os.getpid()}.tmp")
    with pytest.raises(ckpt.DiskFull) as caught:
        ckpt.save(tmp_path, _state(3.0))
    assert str(caught.value) == f"no space left on device: {tmp_path}"
    assert "inline_container" not in str(caught.value) and caught.value.errno == 28
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temp file, both intact
    assert torch.equal(ckpt.latest(tmp_path).state["model"]["weight"], torch.full((2, 3), 2.0))


def test_disk_full_is_recognised_through_wrapping_errors(tmp_path):
    import errno

    from mlflow.exceptions import MlflowException

    raw = OSError(errno.ENOSPC, "No space left on device", "/x/artifact.txt")
    try:
        try:
            raise raw
        except OSError as err:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos") from err
    except RuntimeError as wrapped:
        assert str(ckpt.disk_full(wrapped)) == "no space left on device: /x/artifact.txt"
    sql = MlflowException("(sqlite3.OperationalError) database or disk is full\n[SQL: INSERT ...]")
    assert str(ckpt.disk_full(sql, tmp_path / "mlflow.db")) == f"no space left on device: {tmp_path / 'mlflow.db'}"
    assert ckpt.disk_full(OSError(errno.EACCES, "Permission denied")) is None
    assert ckpt.disk_full(ValueError("bad")) is None


class _CudaGenerator:
    """Stands for a CUDA run's loader generator on a machine without CUDA: a Philox state is 16 bytes."""

    device = torch.device("cuda:0")

    def get_state(self):
        return torch.zeros(16, dtype=torch.uint8)


def test_a_cpu_run_never_asks_cuda_for_its_rng_state(monkeypatch):
    # On a GPU machine CUDA is available; reading its RNG would create a CUDA context on every GPU.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for name in ("get_rng_state", "get_rng_state_all", "init"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, **k: pytest.fail("a CPU run touched CUDA"))
    state = ckpt.rng_state(torch.Generator().manual_seed(0))
    assert "cuda" not in state and state["generator_device"] == "cpu"


def test_a_cuda_run_keeps_its_own_devices_rng_and_it_never_resumes_on_the_cpu(monkeypatch, tmp_path):
    asked = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: asked.append(device) or torch.ones(16, dtype=torch.uint8))
    state = ckpt.rng_state(_CudaGenerator())
    assert asked == [torch.device("cuda:0")] and state["generator_device"] == "cuda:0"
    ckpt.save(tmp_path, {"model": {}, "rng": state})
    saved = ckpt.read(tmp_path / "last.pt")["rng"]
    cpu_generator = torch.Generator().manual_seed(1)
    before = cpu_generator.get_state()
    with pytest.raises(ckpt.CheckpointError, match=r"drawn on cuda:0 and cannot continue on cpu; relaunch with "
                                                   r"trainer.device=cuda to resume it, or resume=false") as err:
        ckpt.restore_rng(saved, cpu_generator)
    assert isinstance(err.value, CifarSweepError) and "Expected a CPUGeneratorImplState" not in str(err.value)
    assert torch.equal(cpu_generator.get_state(), before)  # refused before anything was restored


def test_every_tensor_is_saved_through_to_cpu(monkeypatch, tmp_path):
    seen = []
    real = ckpt.to_cpu
    monkeypatch.setattr(ckpt, "to_cpu", lambda tree: seen.append(tree) or real(tree))
    state = _state(1.0)
    ckpt.save(tmp_path, state)
    assert seen and seen[0] is state
    # What it makes of a state's shapes: tensors copied where not on the CPU, containers rebuilt, the rest as is.
    nested = {"a": [torch.ones(2), (torch.zeros(1), "x")], "b": None, "c": {"d": 3}}
    assert real(nested)["a"][1][1] == "x" and real(nested)["c"] == {"d": 3} and real(nested)["a"][0] is nested["a"][0]
    loaded = torch.load(tmp_path / "last.pt", weights_only=True)  # plain, no map_location
    assert loaded["model"]["weight"].device.type == "cpu"


def test_checkpoint_errors_are_user_errors():
    assert issubclass(ckpt.CheckpointError, CifarSweepError) and issubclass(ckpt.CheckpointError, RuntimeError)
    full = ckpt.DiskFull("/x")
    assert isinstance(full, CifarSweepError) and isinstance(full, OSError) and full.errno == 28
    assert full.one_line() == "no space left on device: /x" + ckpt.DiskFull.hint
