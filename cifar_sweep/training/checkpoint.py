"""Atomic per-epoch checkpoints that resume bit-exactly.

A checkpoint holds everything that decides the next epoch: weights, optimizer, scheduler, weight
average, grad scaler, every RNG (Python, NumPy, torch, the loader's generator), the per-epoch
metrics already measured, the MLflow run id and the config hash. It is written to a temporary file
in the same folder, flushed to disk, then renamed over `last.pt` after the previous one moved to
`prev.pt`: a crash at any instant leaves at least one complete checkpoint. A write that fails
(a full disk) removes its temporary file and leaves both earlier checkpoints as they were.

Loading always uses `torch.load(weights_only=True)`: a checkpoint is data, never code, so a
malicious pickle is refused instead of run. Every tensor is saved as a CPU tensor, so a plain
`torch.load` of a GPU run's checkpoint or weights works on a machine without a GPU.

The loader's generator has a device of its own (a CUDA Philox state is 16 bytes, a CPU Mersenne
Twister state 5056): a checkpoint only resumes a run on the kind of device it was made on, and a
CPU run never asks CUDA for anything, so it creates no CUDA context on a GPU machine.
"""

from __future__ import annotations

import errno
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cifar_sweep.errors import CifarSweepError

log = logging.getLogger(__name__)

LAST, PREV = "last.pt", "prev.pt"
FORMAT_VERSION = 1


class CheckpointError(CifarSweepError, RuntimeError):
    """A checkpoint that cannot be used; the message names the file and what to do."""


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(CifarSweepError, OSError):
    """A write refused for want of space (or quota): the message is the run's failure reason."""

    hint = "; free some space, then run the same command again: it resumes from the last checkpoint"

    def __init__(self, path: str | os.PathLike):
        OSError.__init__(self, errno.ENOSPC, "No space left on device", str(path))

    @property
    def run_reason(self) -> str:
        return f"no space left on device: {self.filename}"

    def __str__(self) -> str:
        return self.run_reason


def disk_full(err: BaseException, store_path: str | os.PathLike | None = None) -> DiskFull | None:
    """The full disk behind `err`, if that is what it is, naming the path that could not be written.

    Looks through the chain of causes: torch wraps a failed write in its own RuntimeError, MLflow
    wraps SQLite's "database or disk is full" in an MlflowException (the store's file is then
    `store_path`).
    """
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DiskFull):
            return current
        if isinstance(current, OSError) and current.errno in NO_SPACE:
            return DiskFull(current.filename or store_path or "?")
        if "database or disk is full" in str(current):
            return DiskFull(store_path or "the SQLite store")
        current = current.__cause__ or current.__context__
    return None


class _RecordingWriter:
    """The file torch.save writes to, keeping the OSError of a failed write that torch replaces by
    its own `RuntimeError: [enforce fail at inline_container.cc] unexpected pos`."""

    def __init__(self, fh):
        self.fh, self.error = fh, None

    def write(self, data) -> int:
        try:
            return self.fh.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def flush(self) -> None:
        self.fh.flush()


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every RNG the next epoch draws from. CUDA's default generator is read only for a run on a
    CUDA device, and only that device's: asking CUDA anything from a CPU run would create a CUDA
    context (hundreds of MB of GPU memory) on every GPU of the machine."""
    numpy_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        # NumPy's state holds an ndarray, which weights_only loading refuses: store it as a tensor.
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]],
        "torch": torch.get_rng_state(),
        "generator": generator.get_state(),
        "generator_device": str(generator.device),
    }
    if generator.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(generator.device)
    return state


def device_kind(name: str | torch.device | None) -> str | None:
    """`cuda:1` -> `cuda`; None stays None."""
    return None if name is None else str(name).split(":")[0]


def restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    saved = device_kind(state.get("generator_device"))
    if saved is not None and saved != generator.device.type:
        raise CheckpointError(
            f"this checkpoint's data order was drawn on {state['generator_device']} and cannot continue on "
            f"{generator.device}; relaunch with trainer.device={saved} to resume it, or resume=false to start over")
    random.setstate(_as_tuple(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    cuda = state.get("cuda")
    if cuda is not None and generator.device.type == "cuda":
        if isinstance(cuda, (list, tuple)):  # an older checkpoint: one state per visible GPU
            cuda = cuda[min(generator.device.index or 0, len(cuda) - 1)]
        torch.cuda.set_rng_state(cuda, generator.device)


def to_cpu(tree: Any) -> Any:
    """The same nested dicts, lists and tuples with every tensor copied to the CPU (a CPU one as is)."""
    if isinstance(tree, torch.Tensor):
        return tree if tree.device.type == "cpu" else tree.detach().cpu()
    if isinstance(tree, dict):
        return {k: to_cpu(v) for k, v in tree.items()}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):  # a named tuple
        return type(tree)(*(to_cpu(v) for v in tree))
    if isinstance(tree, (list, tuple)):
        return type(tree)(to_cpu(v) for v in tree)
    return tree


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def all_finite(state_dict: dict[str, torch.Tensor]) -> bool:
    return all(torch.isfinite(t).all() for t in state_dict.values() if t.is_floating_point())


def save(folder: Path, state: dict[str, Any]) -> Path:
    """Write `state` as folder/last.pt atomically, keeping the previous checkpoint as prev.pt."""
    if not all_finite(state["model"]):
        raise FloatingPointError("refusing to checkpoint non-finite weights")
    tmp = folder / f".{LAST}.{os.getpid()}.tmp"
    writer = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            writer = _RecordingWriter(fh)
            torch.save({**to_cpu(state), "format_version": FORMAT_VERSION}, writer)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException as err:  # a full disk, but also Ctrl-C mid-write: never leave half a file
        tmp.unlink(missing_ok=True)
        full = disk_full(writer.error if writer is not None and writer.error is not None else err)
        if full is not None:
            raise DiskFull(folder) from err
        raise
    last = folder / LAST
    if last.exists():
        os.replace(last, folder / PREV)
    os.replace(tmp, last)
    _fsync_dir(folder)
    return last


def _fsync_dir(folder: Path) -> None:
    """Make the renames durable too (POSIX only; a no-op elsewhere)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read(path: Path) -> dict[str, Any]:
    """Load one checkpoint file as data only; any problem is a CheckpointError naming the file."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, garbage or a pickle that wants to run code
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(err).__name__}: {str(err)[:200]})") from err
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} is not a cifar_sweep checkpoint (format {FORMAT_VERSION})")
    return state


@dataclass(frozen=True)
class Found:
    state: dict[str, Any]
    path: Path
    skipped: tuple[str, ...]  # problems with newer files that were passed over, for the log and the run


def latest(folder: Path) -> Found | None:
    """The newest usable checkpoint in `folder`: last.pt, else prev.pt when last.pt is damaged.

    Returns None when the folder holds no checkpoint at all. When files exist but none is usable,
    raises: a damaged checkpoint must never turn silently into a restart from scratch.
    """
    problems = []
    candidates = [folder / LAST, folder / PREV]
    existing = [p for p in candidates if p.exists()]
    if not existing:
        return None
    for path in existing:
        try:
            return Found(read(path), path, tuple(problems))
        except CheckpointError as err:
            log.warning("%s; trying the previous checkpoint", err)
            problems.append(str(err))
    raise CheckpointError(
        "no usable checkpoint in {}: {}. Delete the folder (or set resume=false) to start over.".format(
            folder, "; ".join(problems))
    )


def differing_keys(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    keys = sorted(set(saved) | set(current))
    return [k for k in keys if saved.get(k, "<missing>") != current.get(k, "<missing>")]
