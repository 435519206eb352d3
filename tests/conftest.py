"""Shared fixtures: the real composed config, an isolated project home, the CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
JPEG_ARCHIVE = REPO.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"


@pytest.fixture(scope="session", autouse=True)
def isolated_home(tmp_path_factory):
    """Every test writes runs/ under a temp home, never into the repository's own runs/."""
    home = tmp_path_factory.mktemp("home")
    os.environ["CIFAR_SWEEP_HOME"] = str(home)
    yield home


@pytest.fixture
def compose_cfg():
    """Compose conf/train.yaml with overrides, exactly as `cifar-sweep` would."""
    import cifar_sweep.train  # noqa: F401  registers the config resolvers

    def _compose(overrides=(), return_hydra_config=False):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose("train", overrides=list(overrides), return_hydra_config=return_hydra_config)

    return _compose


def run_cli(args, home: Path, timeout: float = 300, env_extra=None, module="cifar_sweep.train"):
    """Run a cifar_sweep command in a subprocess with its own project home; returns CompletedProcess."""
    env = {**os.environ, "CIFAR_SWEEP_HOME": str(home), **(env_extra or {})}
    env.pop("MLFLOW_RUN_ID", None)
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=home, env=env, capture_output=True, text=True, timeout=timeout
    )


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need CUDA: skipped, with the reason, on a machine without it."""
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (no GPU on this machine)")
    for item in gpu_items:
        item.add_marker(skip)
