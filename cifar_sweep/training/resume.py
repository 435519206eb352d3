"""The run's identity, its checkpoint folder, the lock on it and the resume rule: decided here only.

A run is identified by its config hash (the resolved config without seed, device and paths), its
seed and, for comparisons, its device and thread count. Its resume checkpoints live in one folder
per (experiment, config, seed), so relaunching the same command finds them; that folder is locked
by the one live process training into it. The lock's owner file has a fixed size, written while
there is room, so that a process that cannot end its run in the store (a full disk) can still
leave the run's end in it, in place, for `cifar-sweep-reap`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock, Timeout

from cifar_sweep.config.identity import config_hash, hashed_items

if TYPE_CHECKING:  # torch loads only when a checkpoint is read: `cifar-sweep-reap` reads owner files
    from cifar_sweep.training import checkpoint as ckpt

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
OWNER_NAME = ".owner"
OWNER_SIZE = 4096  # bytes: one block on common file systems, overwritten in place (no new space)


class RunInUse(RuntimeError):
    """Another live process trains this very config and seed into the same checkpoint folder."""


def safe_folder_name(name: str) -> str:
    """Any experiment name MLflow accepts as one harmless folder name (no `..`, no separators)."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "experiment"
    if slug == name:
        return slug
    return f"{slug[:60]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


@dataclass(frozen=True)
class RunIdentity:
    config_hash: str
    config: Mapping[str, str]  # the hashed keys, as text: what a resumed checkpoint must match
    seed: int
    device: str
    threads: int | None  # as requested (trainer.threads), not as resolved
    checkpoint_dir: Path

    @classmethod
    def of(cls, resolved: Mapping[str, Any], device: str, runs_dir: Path, experiment: str) -> "RunIdentity":
        digest = config_hash(resolved)
        seed = int(resolved["seed"])
        return cls(
            config_hash=digest,
            config={k: str(v) for k, v in hashed_items(resolved).items()},
            seed=seed,
            device=device,
            threads=resolved["trainer"].get("threads"),
            checkpoint_dir=Path(runs_dir) / "checkpoints" / safe_folder_name(experiment) / f"{digest}-seed{seed}",
        )

    def record(self) -> dict[str, Any]:
        """What a checkpoint stores of its run's identity."""
        return {"config_hash": self.config_hash, "config": dict(self.config), "seed": self.seed}


class FolderLock:
    """The checkpoint folder's owner: one live process at a time (released when it exits, even killed)."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self._lock = FileLock(str(folder / LOCK_NAME))

    def acquire(self, run_hint: str = "") -> None:
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            owner = read_owner(self.folder) or {}
            who = f"pid {owner['pid']}" if "pid" in owner else "?"
            raise RunInUse(
                f"another process ({who}) is training this config and seed now{run_hint}; wait for it to end, "
                "or change the seed to start a separate run"
            ) from None
        self._write({"pid": os.getpid(), "host": socket.gethostname()}, truncate=True)

    def leave_end(self, run_id: str, status: str, reason: str) -> bool:
        """Write the run's end into the owner file in place, when the store could not take it."""
        entry = {"pid": os.getpid(), "host": socket.gethostname(), "run_id": run_id, "status": status,
                 "reason": reason[:600]}  # ASCII JSON: at most 6 bytes a character
        try:
            self._write(entry, truncate=False)
        except OSError as err:
            log.warning("could not leave the end of run %s in %s either (%s)", run_id, self.folder, err)
            return False
        return True

    def _write(self, entry: dict, truncate: bool) -> None:
        data = json.dumps(entry).encode()[:OWNER_SIZE - 1].ljust(OWNER_SIZE - 1) + b"\n"
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if truncate else 0)
        fd = os.open(self.folder / OWNER_NAME, flags, 0o644)
        try:
            os.pwrite(fd, data, 0)
            os.fsync(fd)
        finally:
            os.close(fd)

    def release(self) -> None:
        if self._lock.is_locked:
            self._lock.release()


def read_owner(folder: str | os.PathLike) -> dict[str, Any] | None:
    """What the owner file of a checkpoint folder says (pid, host, and a run's end left there)."""
    try:
        entry = json.loads((Path(folder) / OWNER_NAME).read_text())
    except (OSError, ValueError):
        return None
    return entry if isinstance(entry, dict) else None


def find_resume(identity: RunIdentity, mode: Any, run_status: Callable[[str], str | None]) -> ckpt.Found | None:
    """The checkpoint to continue from, per `resume`: auto (default) | true | false | a path.

    auto continues an unfinished run of this exact config and seed when its checkpoint exists;
    true insists on one; a path names a checkpoint folder or file. A checkpoint made with another
    config is refused with the differing keys; a damaged one falls back to the previous one.
    `run_status(run_id)` says whether the checkpoint's run is still unfinished in the store.
    """
    from cifar_sweep.training import checkpoint as ckpt

    if mode in (False, "false", None):
        return None
    explicit = mode not in (True, "true", "auto")
    path = Path(str(mode)).expanduser() if explicit else identity.checkpoint_dir
    found = ckpt.Found(ckpt.read(path), path, ()) if explicit and path.is_file() else ckpt.latest(path)
    if found is None:
        if mode == "auto":
            return None
        raise ValueError(f"resume={mode}: no checkpoint in {path}; run without resume=... to start fresh")
    current = dict(identity.config) | {"seed": str(identity.seed)}
    saved = dict(found.state.get("config", {})) | {"seed": str(found.state.get("seed"))}
    differing = ckpt.differing_keys(saved, current)
    if differing:
        raise ValueError(
            f"checkpoint {found.path} was made with a different config; differing keys: {', '.join(differing)}. "
            "Resume with the same config, or set resume=false to start a new run."
        )
    status = run_status(found.state["run_id"])
    if status in (None, "FINISHED"):
        if mode == "auto":  # nothing to continue: that run completed (or was deleted)
            return None
        raise ValueError(f"resume={mode}: the run {found.state['run_id']} of {found.path} is {status or 'gone'}")
    return found
