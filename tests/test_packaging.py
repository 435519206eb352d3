"""The package as a user installs it: a built wheel, commands run from an unrelated folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from setuptools import find_namespace_packages

from helpers import REPO


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_pyproject_lists_every_package():
    """A package folder left out of `packages` silently misses the wheel (conf/'s groups included)."""
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    found = set(find_namespace_packages(str(REPO), include=["cifar_sweep*", "hydra_plugins*"]))
    found |= {"cifar_sweep.conf"} | {f"cifar_sweep.conf.{p}" for p in find_namespace_packages(str(REPO / "conf"))}
    assert listed == {p for p in found if "__pycache__" not in p}


def test_configs_load_by_module_path_not_by_folder():
    """The joblib and submitit workers import `main` elsewhere: the config path cannot hang on cwd."""
    from cifar_sweep.config import paths

    assert paths.CONFIG_DIR == "pkg://cifar_sweep.conf"
    assert _pyproject()["tool"]["setuptools"]["package-dir"] == {"cifar_sweep.conf": "conf"}


def _copy_sources(dest: Path) -> Path:
    """Build from a copy: a build in the checkout would write build/ and egg-info there, and a stale
    build/lib could put modules deleted from the source into the wheel."""
    skip = shutil.ignore_patterns(".git", ".venv", "venv", "runs", "build", "dist", "*.egg-info", "__pycache__",
                                  ".pytest_cache", "results", "outputs", "multirun", "mlruns")
    return Path(shutil.copytree(REPO, dest, ignore=skip))


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
@pytest.mark.cli
def test_wheel_runs_from_an_unrelated_folder(tmp_path):
    src, dist, site, work = _copy_sources(tmp_path / "src"), tmp_path / "dist", tmp_path / "site", tmp_path / "work"
    work.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(src)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = dist.glob("cifar_sweep-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    configs = {f"cifar_sweep/conf/{p.relative_to(REPO / 'conf')}" for p in (REPO / "conf").rglob("*.yaml")}
    assert configs <= set(names), sorted(configs - set(names))
    assert "hydra_plugins/cifar_sweep_sweeper/sweepers.py" in names
    assert not [n for n in names if n.startswith(("hydra_plugins/__init__", "conf/", "tests/", "runs/"))]
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, timeout=300)

    # No bytecode, so "nothing is written into the installed package" is an exact file listing.
    env = {k: v for k, v in os.environ.items() if k not in ("CIFAR_SWEEP_HOME", "CIFAR_SWEEP_DATA")}
    env |= {"PYTHONPATH": str(site), "PYTHONDONTWRITEBYTECODE": "1"}
    installed = _files(site)

    def run(*args, **extra_env):
        return subprocess.run([sys.executable, *args], cwd=work, env=env | extra_env,
                              capture_output=True, text=True, timeout=300)

    # The editable install of this checkout must not shadow the wheel under test.
    where = run("-c", "import cifar_sweep, cifar_sweep.conf; print(cifar_sweep.__file__); print(cifar_sweep.conf.__file__)")
    assert where.returncode == 0 and all(line.startswith(str(site)) for line in where.stdout.split()), where

    # Every console script of pyproject is in the wheel's metadata and loads to a callable.
    scripts = _pyproject()["project"]["scripts"]
    check = run("-c", (
        "import importlib.metadata as md, sys\n"
        f"(dist,) = [d for d in md.distributions(path=[{str(site)!r}]) if d.metadata['Name'] == 'cifar-sweep']\n"
        "for ep in dist.entry_points.select(group='console_scripts'):\n"
        "    assert callable(ep.load()), ep\n"
        "    print(ep.name, '=', ep.value)\n"))
    assert check.returncode == 0, check.stderr[-3000:]
    assert set(check.stdout.splitlines()) == {f"{name} = {target}" for name, target in scripts.items()}

    preset = run("-m", "cifar_sweep.train", "experiment=resnet_cifar2", "--cfg", "job")
    assert preset.returncode == 0 and "ResNetSeed" in preset.stdout, preset.stderr[-3000:]

    # The default data root lies beside a checkout; here it is missing, and one line says what to do.
    no_data = run("-m", "cifar_sweep.train")
    assert no_data.returncode != 0 and "CIFAR_SWEEP_DATA" in no_data.stderr, no_data.stderr[-3000:]
    assert len(no_data.stderr.strip().splitlines()) == 1, no_data.stderr[-3000:]

    trained = run("-m", "cifar_sweep.train", "data=synthetic", "model=logreg", "trainer.epochs=1")
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert (work / "runs" / "mlflow.db").is_file()
    board = run("-m", "cifar_sweep.commands.leaderboard")
    assert board.returncode == 0 and "logreg" in board.stdout, board.stdout + board.stderr

    # A sweep through the joblib launcher: its workers unpickle `main` and find the configs alone.
    home = tmp_path / "home"
    swept = run("-m", "cifar_sweep.train", "-m", "data=synthetic", "trainer.epochs=1", "model=logreg,mlp",
                "hydra/launcher=parallel", CIFAR_SWEEP_HOME=str(home))
    assert swept.returncode == 0 and "2 jobs: 2 finished" in swept.stdout, swept.stdout[-2000:] + swept.stderr[-3000:]
    assert (home / "runs" / "mlflow.db").is_file()

    assert _files(site) == installed
    assert not list(site.rglob("mlflow.db")) and not (site / "runs").exists()
