"""The run's identity, its checkpoint folder, the lock on it and the resume rule: decided here only.

A run is identified by its config hash (the resolved config without seed, device and paths), its
seed and its setup: the kind of device, compiled or eager, and the resolved precision (for the skip
rule and comparisons also the device's index and the thread count). Its resume checkpoints live in
one folder per (experiment, config, seed, setup), so relaunching the same command finds them, and
the same config relaunched on another kind of device is a run of its own: a GPU run's data order
cannot continue on a CPU, and one run must never hold epochs timed on two devices. That folder is
locked by the one live process training into it. The lock's owner file has a fixed size, written while
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

from cifar_sweep.config.identity import config_hash, device_kind, hashed_items, run_setup, setup_slug
from cifar_sweep.errors import CifarSweepError

if TYPE_CHECKING:  # torch loads only when a checkpoint is read: `cifar-sweep-reap` reads owner files
    from cifar_sweep.training import checkpoint as ckpt

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
OWNER_NAME = ".owner"
OWNER_SIZE = 4096  # bytes: one block on common file systems, overwritten in place (no new space)


class RunInUse(CifarSweepError, RuntimeError):
    """Another live process trains this very config and seed into the same checkpoint folder."""


class ResumeRefused(CifarSweepError, ValueError):
    """A checkpoint that this run must not continue from (another config, device or setup, or none)."""


def safe_folder_name(name: str, max_bytes: int = 100) -> str:
    """Any experiment name MLflow accepts as one harmless folder name: no `..`, no separators, plain
    ASCII, at most `max_bytes` (far under the 255 bytes of ext4, XFS, APFS and NTFS and the 143 of
    eCryptfs; MLflow takes names of any length). A name that already is such a folder name is kept
    as it is; any other is cut and given a hash of the whole name, so two names never share a folder."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "experiment"
    if slug == name and len(slug) <= max_bytes:
        return slug
    return f"{slug[:min(60, max_bytes - 9)]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


@dataclass(frozen=True)
class RunIdentity:
    config_hash: str
    config: Mapping[str, str]  # the hashed keys, as text: what a resumed checkpoint must match
    seed: int
    device: str
    threads: int | None  # as requested (trainer.threads), not as resolved
    checkpoint_dir: Path
    setup: Mapping[str, str]  # device kind, compile, resolved precision: `identity.run_setup`

    @classmethod
    def of(cls, resolved: Mapping[str, Any], device: str, runs_dir: Path, experiment: str,
           precision: str | None = None) -> "RunIdentity":
        """`device` as resolved (`cuda:0`), `precision` as resolved (`Hardware.precision`; without it,
        the requested `trainer.precision`, which for `auto` does not say what the run computes in)."""
        digest = config_hash(resolved)
        seed = int(resolved["seed"])
        setup = run_setup(resolved, device, precision)
        return cls(
            config_hash=digest,
            config={k: str(v) for k, v in hashed_items(resolved).items()},
            seed=seed,
            device=str(device),
            threads=resolved["trainer"].get("threads"),
            checkpoint_dir=(Path(runs_dir) / "checkpoints" / safe_folder_name(experiment)
                            / f"{digest}-seed{seed}-{setup_slug(setup)}"),
            setup=setup,
        )

    @property
    def compile(self) -> bool:
        return self.setup["compile"] == "True"

    @property
    def precision(self) -> str:
        return self.setup["precision"]

    def record(self) -> dict[str, Any]:
        """What a checkpoint stores of its run's identity."""
        return {"config_hash": self.config_hash, "config": dict(self.config), "seed": self.seed,
                "setup": dict(self.setup), "device": self.device}


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

    auto continues an unfinished run of this exact config, seed and setup when its checkpoint
    exists; true insists on one; a path names a checkpoint folder or file. A checkpoint made with
    another config, on another kind of device, compiled where this run is eager (or the reverse) or
    in another precision is refused in one line that names both sides; a damaged one falls back to
    the previous one. `run_status(run_id)` says whether the checkpoint's run is still unfinished.
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
        raise ResumeRefused(f"resume={mode}: no checkpoint in {path}; run without resume=... to start fresh")
    current = dict(identity.config) | {"seed": str(identity.seed)}
    saved = dict(found.state.get("config", {})) | {"seed": str(found.state.get("seed"))}
    differing = ckpt.differing_keys(saved, current)
    if differing:
        raise ResumeRefused(
            f"checkpoint {found.path} was made with a different config; differing keys: {', '.join(differing)}. "
            "Resume with the same config, or set resume=false to start a new run."
        )
    check_setup(found, identity)
    status = run_status(found.state["run_id"])
    if status in (None, "FINISHED"):
        if mode == "auto":  # nothing to continue: that run completed (or was deleted)
            return None
        raise ResumeRefused(f"resume={mode}: the run {found.state['run_id']} of {found.path} is {status or 'gone'}")
    return found


def saved_setup(state: Mapping[str, Any]) -> dict[str, str]:
    """The setup a checkpoint was made with; for one written before setups were recorded, the kind
    of device its loader's generator lived on (the one part that decides whether it can resume)."""
    setup = dict(state.get("setup") or {})
    if "device" not in setup:
        generator_device = (state.get("rng") or {}).get("generator_device")
        if generator_device is not None:
            setup["device"] = device_kind(generator_device)
    return setup


def check_setup(found: ckpt.Found, identity: RunIdentity) -> None:
    """Refuse a checkpoint of another device kind, compile choice or precision, naming both sides."""
    saved = saved_setup(found.state)
    kind = identity.setup["device"]
    if saved.get("device", kind) != kind:
        made_on = found.state.get("device") or saved["device"]
        raise ResumeRefused(
            f"checkpoint {found.path} was made on {made_on} and this run is on {identity.device}: a run continues "
            f"on the kind of device it started on. Relaunch with trainer.device={saved['device']} to continue it, "
            "or set resume=false to start a new run here."
        )
    names = {"compile": "trainer.compile", "precision": "precision"}
    differing = [f"{names[k]} {saved[k]} (now {identity.setup[k]})" for k in names
                 if k in saved and saved[k] != identity.setup[k]]
    if differing:
        raise ResumeRefused(
            f"checkpoint {found.path} was made with {', '.join(differing)}. Resume with the same setup, "
            "or set resume=false to start a new run."
        )
