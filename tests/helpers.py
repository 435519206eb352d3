"""Plain helpers the test modules import (`from helpers import run_cli, CONF`): paths of this checkout
and the one way a test starts a cifar_sweep command in a subprocess. No fixtures here: those live in
conftest.py and in the plugin modules it lists in `pytest_plugins`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
JPEG_ARCHIVE = REPO.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"


def run_cli(args, home: Path, timeout: float = 300, env_extra=None, module="cifar_sweep.train"):
    """Run a cifar_sweep command in a subprocess with its own project home; returns CompletedProcess.

    A test that calls this (directly or through a fixture) is marked `cli`."""
    env = {**os.environ, "CIFAR_SWEEP_HOME": str(home), **(env_extra or {})}
    env.pop("MLFLOW_RUN_ID", None)
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=home, env=env, capture_output=True, text=True, timeout=timeout
    )
