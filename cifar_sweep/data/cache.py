"""Decoded datasets on disk: one torch file per source state, checksummed, built under a file lock.

Layout, in cache_dir (default runs/cache):
  <stem>-<source tag>-<state key>.pt          train/test uint8 tensors, labels, per-image channel sums
  <stem>-<source tag>-<state key>.pt.sha256   its sha256, in `sha256sum -c` format
  <stem>-<source tag>.lock                    filelock, one per source path
The source tag hashes the source's path; the state key hashes its size and mtime (or, for a
directory, every file's size and mtime) and the cache format, so editing the source misses the cache,
and the rebuild deletes the stale file of the same source.

Readers take the lock too: the data file and its checksum are replaced one after the other, and
the lock is what makes the pair consistent. Writes go to a temporary file in the same folder and
are renamed into place, so a killed process never leaves a half-written cache under the real name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import filelock
import torch

from .archive import file_sha256
from .bundle import DataError, LabeledImages

CACHE_FORMAT = 1
LOCK_TIMEOUT_S = 900.0  # another process decoding a large tree; a crashed holder frees the lock at once
log = logging.getLogger(__name__)


def cached(cache_dir: str | os.PathLike, stem: str, identity: str, state: Any, build: Callable[[], dict]) -> tuple[dict, str]:
    """The payload for (identity, state), from the cache if valid, else built and stored.

    Returns the payload and a short status for logs: "cache hit", "decoded in 3.1 s, cached", or
    "cache rebuilt (<why>), decoded in 3.1 s".
    """
    folder = Path(cache_dir).expanduser().resolve()
    tag = _digest(identity)[:8]
    path = folder / f"{stem}-{tag}-{_digest([identity, state, CACHE_FORMAT])[:16]}.pt"
    _mkdir(folder)
    with _locked(folder / f"{stem}-{tag}.lock"):
        payload, problem = _load_verified(path)
        if payload is not None:
            return payload, "cache hit"
        if problem:
            log.warning("discarding corrupt cache %s (%s); rebuilding it", path, problem)
        _remove_stale(folder, f"{stem}-{tag}-")
        start = time.perf_counter()
        payload = build()
        took = time.perf_counter() - start
        _write(path, payload)
    done = f"decoded in {took:.1f} s"
    return payload, f"cache rebuilt ({problem.split(':')[0]}), {done}" if problem else f"{done}, cached"


def pack(train: LabeledImages, test: LabeledImages, classes: list[str], **meta: str) -> dict:
    payload: dict[str, Any] = {"format": CACHE_FORMAT, "classes": list(classes), **meta}
    for split, data in (("train", train), ("test", test)):
        for field in ("images", "labels", "sums", "sumsq"):
            payload[f"{split}_{field}"] = getattr(data, field)
    return payload


def unpack(payload: dict) -> tuple[LabeledImages, LabeledImages, list[str]]:
    train, test = (
        LabeledImages(*(payload[f"{split}_{field}"] for field in ("images", "labels", "sums", "sumsq")))
        for split in ("train", "test")
    )
    return train, test, list(payload["classes"])


def _load_verified(path: Path) -> tuple[dict | None, str | None]:
    """(payload, None) if valid; (None, None) on a plain miss; (None, why) if present but bad."""
    if not path.exists():
        return None, None
    sidecar = path.with_name(path.name + ".sha256")
    try:
        expected = sidecar.read_text().split()[0]
    except (OSError, IndexError):
        return None, f"no checksum: {sidecar} is missing or empty"
    actual = file_sha256(path)
    if actual != expected:
        return None, f"checksum mismatch: {sidecar} says {expected}, the file hashes to {actual}"
    try:
        # mmap: no second read of the file; build_bundle copies what it keeps.
        payload = torch.load(path, weights_only=True, mmap=True)
    except Exception as err:  # any unpickling failure means the same thing: rebuild
        return None, f"unreadable: {err}"
    if not isinstance(payload, dict) or payload.get("format") != CACHE_FORMAT:
        return None, "unexpected content: not a cifar_sweep cache of this format"
    return payload, None


def _write(path: Path, payload: dict) -> None:
    sidecar = path.with_name(path.name + ".sha256")
    tmp_data, tmp_sum = _temp_name(path), _temp_name(sidecar)
    try:
        torch.save(payload, tmp_data)
        _fsync(tmp_data)
        tmp_sum.write_text(f"{file_sha256(tmp_data)}  {path.name}\n")
        os.replace(tmp_data, path)
        os.replace(tmp_sum, sidecar)
    except OSError as err:
        raise DataError(f"cannot write the data cache {path} ({err}); free some disk space or set data.cache_dir elsewhere") from err
    finally:
        tmp_data.unlink(missing_ok=True)
        tmp_sum.unlink(missing_ok=True)


def _temp_name(path: Path) -> Path:
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide a shared cache from other users
    os.close(fd)
    return Path(name)


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _remove_stale(folder: Path, prefix: str) -> None:
    for old in folder.glob(f"{prefix}*.pt*"):  # temporary files start with "." and never match
        old.unlink(missing_ok=True)


def _mkdir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot create the data cache folder {folder} ({err.strerror}); set data.cache_dir to a writable folder") from err


@contextmanager
def _locked(lock_path: Path):
    lock = filelock.FileLock(lock_path, timeout=LOCK_TIMEOUT_S)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise DataError(
            f"waited {LOCK_TIMEOUT_S:.0f} s for {lock_path}: another process is still preparing this dataset; "
            f"if none is running, delete the lock file"
        ) from None
    except OSError as err:
        raise DataError(f"cannot lock {lock_path} ({err.strerror}); set data.cache_dir to a writable folder") from err
    try:
        yield
    finally:
        lock.release()
