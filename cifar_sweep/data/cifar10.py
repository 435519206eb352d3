"""`data=cifar10`: torchvision's CIFAR10 (md5-checked by torchvision), converted once and cached."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

import torch

from .bundle import DataBundle, LabeledImages, build_bundle
from .cache import cached, pack, unpack
from .errors import DataError, DataNotFoundError

REACH_TIMEOUT_S = 3.0  # an offline machine must hear "no" within seconds, not after a resolver's retries
DOWNLOAD_TIMEOUT_S = 60.0  # per socket operation once the host answered


def load_cifar10(
    root: str | os.PathLike,
    val_size: int = 5000,
    classes: Sequence[str] | None = None,
    seed: int = 0,
    download: bool = True,
    *,
    cache_dir: str | os.PathLike,
) -> DataBundle:
    """CIFAR-10 from root/cifar-10-batches-py, downloading it there first if allowed and missing."""
    from torchvision.datasets import CIFAR10

    root_path = Path(str(root)).expanduser().resolve()
    batches = root_path / CIFAR10.base_folder
    if not batches.is_dir():
        _fetch(root_path, download)
    files = sorted(p for p in batches.iterdir() if p.is_file())
    state = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    payload, status = cached(
        cache_dir, "cifar10", str(batches), state, lambda: _convert(root_path)
    )
    train, test, names = unpack(payload)
    return build_bundle(train, test, names, val_size=val_size, subset=classes, seed=seed, source=f"cifar10:{batches} ({status})")


def _missing_message(root: Path, why: str) -> str:
    from torchvision.datasets import CIFAR10

    return (
        f"CIFAR-10 not found in {root} (looked for {root / CIFAR10.base_folder}/ and {root / CIFAR10.filename}) "
        f"and {why}. Set data.root to a folder holding cifar-10-batches-py, or use the ImageFolder copy: "
        f"data=folder data.root=<ImageFolder tree or archive>, e.g. data.root=../shared/datasets/cifar10-jpeg.tar.gz"
    )


def _fetch(root: Path, download: bool) -> None:
    """Download (or just extract a downloaded archive) via torchvision, failing fast when offline."""
    from torchvision.datasets import CIFAR10

    if not download:
        raise DataNotFoundError(_missing_message(root, "data.download is false"))
    if not (root / CIFAR10.filename).is_file():
        host = urlparse(CIFAR10.url).hostname or ""
        if not _reachable(host, 443, REACH_TIMEOUT_S):
            raise DataNotFoundError(_missing_message(root, f"{host} is unreachable (no network?), so it cannot be downloaded"))
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # torchvision's urlopen has no timeout of its own
    try:
        CIFAR10(str(root), train=True, download=True)
    except (OSError, RuntimeError) as err:
        raise DataNotFoundError(_missing_message(root, f"the download failed ({err})")) from err
    finally:
        socket.setdefaulttimeout(previous)


def _reachable(host: str, port: int, timeout: float) -> bool:
    """Name lookup has no timeout of its own, so the whole check runs in a thread we stop waiting for."""
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def _convert(root: Path) -> dict:
    from torchvision.datasets import CIFAR10

    splits = []
    for train in (True, False):
        try:
            ds = CIFAR10(str(root), train=train, download=False)  # verifies every file's md5
        except RuntimeError as err:
            raise DataError(
                f"{root / CIFAR10.base_folder}: torchvision's checksum check failed ({err}); the copy is "
                f"incomplete or corrupt: delete that folder and download it again"
            ) from err
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # stored HWC
        splits.append(LabeledImages.from_images(images, torch.tensor(ds.targets, dtype=torch.int64)))
    return pack(splits[0], splits[1], list(ds.classes), origin=str(root), source_sha256="")
