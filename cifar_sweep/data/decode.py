"""Image files -> uint8 (N, 3, 32, 32), decoded in parallel worker processes for large trees.

Measured on the 2-core dev machine (60,000 CIFAR JPEGs): torchvision.io decodes a 32x32 JPEG in
about 25 us against about 110 us for PIL, but holds the GIL, so threads do not help; reading the
tar stream costs about 2.5 s on one core. The fastest arrangement found: the caller reads, and
chunks of encoded bytes go to forked worker processes that decode while reading continues
(about 2.8 s in all, against about 4.5 s in one process). Fork, because a fresh interpreter needs
about 5 s here just to import torch.

Grayscale, palette and RGBA images are converted to RGB (alpha dropped); 16-bit images and any
size other than 32x32 are refused with the file named.
"""

from __future__ import annotations

import functools
import io
import multiprocessing
import os
import re
import signal
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor

import numpy as np
import torch

from .bundle import DataError, channel_sums

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
WORKERS_ENV = "CIFAR_SWEEP_DECODE_WORKERS"  # 0 or 1 = decode in the calling process
CHUNK = 2000  # images per task: large enough to amortise pickling, small enough to overlap reading
_TORCH_ERROR_PREFIX = re.compile(r"^\w+, \S+:\d+, ")  # "decode_jpeg, /path/decode_jpeg.cpp:171, "

Payload = bytes | str  # encoded bytes, or a file path the worker reads itself


def decode_chunk(items: list[tuple[str, Payload]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, str]]:
    """Decode (name, payload) pairs; returns images, per-image channel sums/sumsq, and errors by row.

    Errors are returned rather than raised so that a bad file the caller turns out not to need (or
    a second bad file in the same chunk) does not hide which needed file failed first.
    """
    decode = _backend()
    images = np.zeros((len(items), 3, 32, 32), dtype=np.uint8)
    errors: dict[int, str] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29 deprecates torchvision.io
        for row, (name, payload) in enumerate(items):
            try:
                images[row] = _decode_checked(name, payload, decode)
            except DataError as err:
                errors[row] = str(err)
    sums, sumsq = channel_sums(images)
    return images, sums.numpy(), sumsq.numpy(), errors


def _decode_checked(name: str, payload: Payload, decode: Callable[[bytes], np.ndarray]) -> np.ndarray:
    data = _read(name, payload)
    if not data:
        raise DataError(f"{name}: empty file; delete it or replace it with a 32x32 image")
    try:
        pixels = decode(data)
    except (RuntimeError, OSError, ValueError, SyntaxError) as err:
        reason = _TORCH_ERROR_PREFIX.sub("", str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__)
        raise DataError(f"{name}: cannot decode image ({reason}); the file is corrupt or truncated: replace or delete it") from None
    if pixels.dtype != np.uint8:
        raise DataError(f"{name}: {pixels.dtype} pixels (e.g. a 16-bit PNG); save it as 8-bit RGB")
    if pixels.shape != (3, 32, 32):
        h, w = pixels.shape[1:]
        raise DataError(f"{name}: image is {w}x{h}, expected 32x32; resize the tree's images or remove this file")
    return pixels


def _read(name: str, payload: Payload) -> bytes:
    if isinstance(payload, bytes):
        return payload
    try:
        with open(payload, "rb") as f:
            return f.read()
    except OSError as err:
        raise DataError(f"{name}: cannot read ({err.strerror})") from None


@functools.cache
def _backend() -> Callable[[bytes], np.ndarray]:
    """torchvision.io while it exists (fast); PIL once it is gone (it is deprecated since 0.29)."""
    try:
        from torchvision.io import ImageReadMode, decode_image
    except ImportError:
        return decode_pil

    def decode_torchvision(data: bytes) -> np.ndarray:
        return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB).numpy()

    # The first call loads the codec libraries (about 0.3 s); pay it once, before workers fork.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            decode_torchvision(b"\xff\xd8")
        except RuntimeError:
            pass
    return decode_torchvision


def decode_pil(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data), formats=("JPEG", "PNG")) as image:
        image.load()  # raises on truncated data instead of padding it with grey
        if image.mode.startswith("I"):
            raise ValueError(f"{image.mode} pixels, e.g. a 16-bit PNG; save it as 8-bit RGB")
        return np.asarray(image.convert("RGB")).transpose(2, 0, 1).copy()


def worker_count() -> int:
    env = os.environ.get(WORKERS_ENV)
    if env is not None:
        try:
            return max(0, int(env))
        except ValueError:
            raise DataError(f"{WORKERS_ENV}={env!r} must be a whole number of processes") from None
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(cpus, 8)


class ChunkDecoder:
    """Collects (key, name, payload), decodes in chunks (in worker processes once there is more
    than one chunk), and assembles rows in any requested key order."""

    def __init__(self, workers: int | None = None) -> None:
        self._workers = worker_count() if workers is None else workers
        self._pool: ProcessPoolExecutor | None = None
        self._keys: dict[str, int] = {}
        self._buffer: list[tuple[str, Payload]] = []
        self._pending: list[Future | tuple] = []
        _backend()  # import torchvision before forking so the workers inherit it

    def __enter__(self) -> ChunkDecoder:
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def add(self, key: str, name: str, payload: Payload) -> None:
        if key in self._keys:
            raise DataError(f"{name}: listed twice in the tree")
        self._keys[key] = len(self._keys)
        self._buffer.append((name, payload))
        if len(self._buffer) == CHUNK:
            self._submit()

    def collect(self, keys: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images, sums and sumsq for `keys` in that order; raises naming the first bad file."""
        if self._buffer:
            self._submit(final=True)
        dest = np.full(len(self._keys), -1, dtype=np.int64)
        dest[[self._keys[k] for k in keys]] = np.arange(len(keys))
        images = np.empty((len(keys), 3, 32, 32), dtype=np.uint8)
        sums = np.empty((len(keys), 3), dtype=np.int64)
        sumsq = np.empty((len(keys), 3), dtype=np.int64)
        start = 0
        for pending in self._pending:
            chunk_images, chunk_sums, chunk_sumsq, errors = pending.result() if isinstance(pending, Future) else pending
            rows = dest[start : start + len(chunk_images)]
            for row, message in errors.items():
                if rows[row] >= 0:
                    raise DataError(message)
            _place(rows, (images, sums, sumsq), (chunk_images, chunk_sums, chunk_sumsq))
            start += len(chunk_images)
        return torch.from_numpy(images), torch.from_numpy(sums), torch.from_numpy(sumsq)

    def _submit(self, final: bool = False) -> None:
        items, self._buffer = self._buffer, []
        # A single chunk (small trees, tests) is not worth starting processes for.
        if self._workers > 1 and not (final and not self._pending) and _can_fork():
            if self._pool is None:
                context = multiprocessing.get_context("fork")
                self._pool = ProcessPoolExecutor(self._workers, mp_context=context, initializer=_init_worker)
            self._pending.append(self._pool.submit(decode_chunk, items))
        else:
            self._pending.append(decode_chunk(items))


def _place(rows: np.ndarray, outputs: tuple[np.ndarray, ...], chunk: tuple[np.ndarray, ...]) -> None:
    """out[rows[i]] = chunk[i] for every used row (rows[i] >= 0)."""
    if len(rows) and rows[0] >= 0 and np.array_equal(rows, np.arange(rows[0], rows[0] + len(rows))):
        for out, part in zip(outputs, chunk):  # the usual case: tree order = stored order; one memcpy
            out[rows[0] : rows[0] + len(rows)] = part
        return
    used = rows >= 0
    for out, part in zip(outputs, chunk):
        out[rows[used]] = part[used]


def _can_fork() -> bool:
    return "fork" in multiprocessing.get_all_start_methods()


def _init_worker() -> None:
    # One thread per worker: the workers are the parallelism, and a forked OpenMP pool is unsafe.
    torch.set_num_threads(1)
    # Ctrl-C reaches the whole process group: let the parent alone handle it (it cancels the
    # pool), and let SIGTERM end a worker at once instead of running a handler forked from the parent.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
