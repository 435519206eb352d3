"""Tiny image trees for the data tests (test_data_*.py): helpers to import, and the fixtures `tree`
and `cache`, which conftest.py lists as a plugin so that every data test file gets the same ones.

`cache` here is a folder for the loaders' tensor caches; it stands in for pytest's own `cache`
fixture, which no test of this suite uses. torch is imported only inside the helpers that need it,
so loading this plugin costs the torch-free test files nothing."""

from __future__ import annotations

import io
import tarfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

if TYPE_CHECKING:
    import torch

    from cifar_sweep.data import DataBundle


def pixels(seed: int, size: tuple[int, int] = (32, 32), channels: int = 3) -> np.ndarray:
    shape = (*size, channels) if channels > 1 else size
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def save(path: Path, array: np.ndarray, fmt: str = "PNG") -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def make_tree(root: Path, classes=("cat", "dog"), n_train: int = 6, n_test: int = 3) -> dict[str, np.ndarray]:
    """A tiny tree of random 32x32 images: PNG (lossless, so pixels can be compared) and one JPEG
    per class. Returns the PNG pixels by relative path."""
    expected = {}
    for split, n in (("train", n_train), ("test", n_test)):
        for c, name in enumerate(classes):
            for i in range(n):
                rel = f"{split}/{name}/{i:04d}"
                if i == 0:
                    save(root / f"{rel}.jpg", pixels(zlib.crc32(rel.encode())), "JPEG")
                else:
                    array = pixels(zlib.crc32(rel.encode()))
                    save(root / f"{rel}.png", array)
                    expected[f"{rel}.png"] = array
    return expected


def tar_tree(tree: Path, archive: Path, top: str | None = "cifar-tiny") -> Path:
    with tarfile.open(archive, "w" if archive.suffix == ".tar" else "w:gz") as tar:
        tar.add(tree, arcname=top or ".")
    return archive


def rows(images: torch.Tensor) -> set[bytes]:
    return {bytes(img.numpy().tobytes()) for img in images}


def assert_same_bundle(a: DataBundle, b: DataBundle) -> None:
    import torch

    for split in ("train", "val", "test"):
        assert torch.equal(getattr(a, split).images, getattr(b, split).images), split
        assert torch.equal(getattr(a, split).labels, getattr(b, split).labels), split
    assert (a.classes, a.mean, a.std, a.val_is_test) == (b.classes, b.mean, b.std, b.val_is_test)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    make_tree(tmp_path / "tree")
    return tmp_path / "tree"


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"
