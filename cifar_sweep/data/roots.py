"""Where data.root points: checked in microseconds and without torch, so the entry point can refuse
a wrong path before it loads torch or opens a run (`cifar-sweep data.root=/no/such/path` must fail
within seconds)."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import DataError, DataNotFoundError

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
EXAMPLE_ROOT = "../shared/datasets/cifar10-jpeg.tar.gz"
DATA_ENV = "CIFAR_SWEEP_DATA"  # read by conf/data/folder.yaml


def resolve_root(root: str | os.PathLike | None) -> Path:
    """The absolute path of data.root for `load_folder`: an existing directory or tar archive."""
    # One line that says what the data must look like and the two ways to name it: outside a
    # checkout the default (../shared/datasets/ beside the working directory) rarely exists.
    fix = (f"point data.root at CIFAR-10 as an ImageFolder tree train/<class>/*, test/<class>/* (a directory "
           f"or a .tar.gz of one, e.g. data.root={EXAMPLE_ROOT}), or set {DATA_ENV} to one")
    if root is None or not str(root).strip():
        raise DataNotFoundError(f"data.root is not set; {fix}")
    given = Path(str(root)).expanduser()
    path = given.resolve()
    if not path.exists():
        relative = "" if given.is_absolute() else f" (relative to {Path.cwd()})"
        raise DataNotFoundError(f"data.root={root}: {path}{relative} does not exist; {fix}, or put the copy at {path}")
    if path.is_file() and not path.name.lower().endswith(ARCHIVE_SUFFIXES):
        raise DataError(f"data.root={root}: {path} is neither a directory nor a {'/'.join(ARCHIVE_SUFFIXES)} archive; {fix}")
    return path
