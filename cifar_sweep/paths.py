"""Where the project keeps its runs: torch-free, shared by training and the reporting commands."""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "CIFAR_SWEEP_HOME"


def project_root() -> Path:
    """The folder holding `runs/`: $CIFAR_SWEEP_HOME if set, else the repository root.

    Absolute on purpose: every job of a sweep must reach the same store whatever its working dir.
    """
    env = os.environ.get(HOME_ENV)
    return Path(env).expanduser().resolve() if env else Path(__file__).resolve().parents[1]


def runs_dir() -> Path:
    return project_root() / "runs"


def default_tracking_uri() -> str:
    return f"sqlite:///{runs_dir() / 'mlflow.db'}"
