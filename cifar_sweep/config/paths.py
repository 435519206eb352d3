"""Where the project keeps its runs and finds its configs and data: torch-free, for training and commands.

Inside a checkout (an editable install) runs live in <checkout>/runs; installed from a wheel they
live in ./runs of the working directory; $CIFAR_SWEEP_HOME overrides both. Never in site-packages.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

from omegaconf import OmegaConf

HOME_ENV = "CIFAR_SWEEP_HOME"

# The configs ship inside the package as `cifar_sweep.conf` (pyproject maps it onto the top-level
# conf/ folder), so one module path finds them in a checkout and in a wheel, whatever the working
# directory (the joblib and submitit launchers import `main` in other processes).
CONFIG_DIR = "pkg://cifar_sweep.conf"


@cache  # where this file lies does not change while the process runs
def checkout_root() -> Path | None:
    """The repository this package runs from, or None when it is installed from a wheel."""
    top = Path(__file__).resolve().parents[2]
    # A wheel installed with `pip --target DIR` puts the package in DIR: its parent is then some
    # unrelated folder, which may well hold a pyproject.toml and a conf/ of its own.
    project = top / "pyproject.toml"
    if not ((top / "conf" / "train.yaml").is_file() and project.is_file()):
        return None
    try:
        return top if 'name = "cifar-sweep"' in project.read_text(encoding="utf-8") else None
    except OSError:
        return None


def project_root() -> Path:
    """The folder holding `runs/`: $CIFAR_SWEEP_HOME, else the checkout, else the working directory.

    Absolute on purpose: every job of a sweep must reach the same store whatever its working dir.
    """
    env = os.environ.get(HOME_ENV)
    if env:
        return Path(env).expanduser().resolve()
    return checkout_root() or Path.cwd().resolve()


def repo_root() -> Path:
    """Where the default data path starts (`<this>/../shared/datasets/`): the checkout, else the home."""
    return checkout_root() or project_root()


def runs_dir() -> Path:
    return project_root() / "runs"


def default_tracking_uri() -> str:
    return f"sqlite:///{runs_dir() / 'mlflow.db'}"


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("cs_project_root", lambda: str(project_root()), replace=True)
    OmegaConf.register_new_resolver("cs_repo_root", lambda: str(repo_root()), replace=True)
