"""What every test gets: an isolated project home, the composed config, the GPU skip; and the tiers.

Three tiers, by the markers of pyproject.toml (`cli`, `slow`):

    pytest -m "not slow and not cli"   fast: in process only, every room of the package; about two
                                       minutes on 2 cores
    pytest -m "not slow"               adds the `cli` tests: the real commands in subprocesses, end to end
    pytest                             everything, as CI runs it: adds the `slow` tests (the real CIFAR-10
                                       copy, PostgreSQL, browsers, a built wheel)

A test that starts a cifar_sweep command in a subprocess (helpers.run_cli, or its own Popen of
`-m cifar_sweep...`, directly or through a fixture), or a Hydra app with its sweeper, is marked
`cli`; a path that only such tests reach keeps a quick in-process test (test_sweep_refusals.py for
the grid sweep's refusal and dry run), so the fast tier still covers every room. Short `python -c`
checks of what a fresh interpreter imports or how processes share a lock stay in the fast tier.

Test modules import plain helpers from helpers.py (`from helpers import run_cli`), never from here.
Fixtures that several files share live in the plugin modules of `pytest_plugins` below and are
asked for by name.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

# compose_cfg needs CONF; the other names are re-exported for a test file that still imports them
# from here (their home is helpers.py).
from helpers import CONF, JPEG_ARCHIVE, REPO, run_cli  # noqa: F401

pytest_plugins = ["store_fixtures", "datasets_store", "data_trees", "tracking_server_fixtures", "slurm_cluster"]

# SQLite's commits wait on fsync, and a fresh MLflow store commits each of its schema migrations: on
# a busy disk that is 7-8 s a store against about 1.5 s in memory, the largest share of the fast tier.
# So the session's temporary folders go to tmpfs where there is room for them (not in a container's
# default 64 MB /dev/shm); PYTEST_DEBUG_TEMPROOT or --basetemp given by hand still decide.
TMPFS = Path("/dev/shm")
TMPFS_ROOM_BYTES = 2 * 1024**3


def pytest_configure(config):
    if "PYTEST_DEBUG_TEMPROOT" in os.environ or not (TMPFS.is_dir() and os.access(TMPFS, os.W_OK)):
        return
    fs = os.statvfs(TMPFS)
    if fs.f_bavail * fs.f_frsize >= TMPFS_ROOM_BYTES:
        os.environ["PYTEST_DEBUG_TEMPROOT"] = str(TMPFS)


@pytest.fixture(scope="session", autouse=True)
def isolated_home(tmp_path_factory):
    """Every test writes runs/ under a temp home, never into the repository's own runs/."""
    home = tmp_path_factory.mktemp("home")
    os.environ["CIFAR_SWEEP_HOME"] = str(home)
    yield home


@pytest.fixture
def compose_cfg():
    """Compose conf/train.yaml with overrides, exactly as `cifar-sweep` would."""
    from cifar_sweep.config import paths, schema  # noqa: F401  schema registers the typed config blocks

    paths.register_resolvers()

    def _compose(overrides=(), return_hydra_config=False):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose("train", overrides=list(overrides), return_hydra_config=return_hydra_config)

    return _compose


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
