"""Datasets -> in-memory uint8 tensors (`DataBundle`), one loader per conf/data option.

Loaders (named by `_target_` in conf/data/*.yaml; keyword arguments are the yaml keys plus `seed`):
  load_folder     an ImageFolder tree (directory or .tar/.tar.gz/.tgz), decoded once and cached
  load_cifar10    torchvision's CIFAR10, downloaded when online, converted once and cached
  load_synthetic  generated, deterministic, learnable images; no files

Every split comes in one fixed shuffled order derived from `seed` (the JPEG tree lists images class
by class, and batch-statistics networks score far lower on class-sorted evaluation batches).
Problems raise `DataError` (or `DataNotFoundError`) with a message that names the file or key and
the fix.

The names below load on first use, so `from cifar_sweep.data.roots import resolve_root` (a config
check) and the error classes stay free of torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import DataError, DataNotFoundError

_LAZY = {
    "DataBundle": "bundle",
    "Split": "bundle",
    "load_cifar10": "cifar10",
    "load_folder": "folder",
    "load_synthetic": "synthetic",
    "CIFAR10_CLASSES": "synthetic",
}

if TYPE_CHECKING:
    from .bundle import DataBundle, Split
    from .cifar10 import load_cifar10
    from .folder import load_folder
    from .synthetic import CIFAR10_CLASSES, load_synthetic


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CIFAR10_CLASSES", "DataBundle", "DataError", "DataNotFoundError", "Split", "load_cifar10", "load_folder", "load_synthetic"]
