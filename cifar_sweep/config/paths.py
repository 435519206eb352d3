"""Where the project keeps its runs and finds its configs and data: torch-free, for training and commands."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

HOME_ENV = "CIFAR_SWEEP_HOME"


def project_root() -> Path:
    """The folder holding `runs/`: $CIFAR_SWEEP_HOME if set, else the repository root.

    Absolute on purpose: every job of a sweep must reach the same store whatever its working dir.
    """
    env = os.environ.get(HOME_ENV)
    return Path(env).expanduser().resolve() if env else Path(__file__).resolve().parents[2]


def runs_dir() -> Path:
    return project_root() / "runs"


def default_tracking_uri() -> str:
    return f"sqlite:///{runs_dir() / 'mlflow.db'}"




def repo_root() -> Path:
    """The checkout this package runs from (the shared datasets sit beside it)."""
    return Path(__file__).resolve().parents[2]


# The primary config folder, absolute: "../conf" would be resolved against the *module* when main is
# imported (the console script, or the importable main that parallel launchers pickle).
CONFIG_DIR = str(repo_root() / "conf")


def register_resolvers() -> None:
    OmegaConf.register_new_resolver("cs_project_root", lambda: str(project_root()), replace=True)
    OmegaConf.register_new_resolver("cs_repo_root", lambda: str(repo_root()), replace=True)
