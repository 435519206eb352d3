"""The package as a user installs it: a built wheel, commands run from an unrelated folder."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from setuptools import find_namespace_packages

from conftest import REPO


def test_pyproject_lists_every_package():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set(find_namespace_packages(str(REPO), include=["cifar_sweep*", "hydra_plugins*"]))
    found = {p for p in found if "__pycache__" not in p} | {"cifar_sweep.conf"}
    assert listed == found


@pytest.mark.slow
def test_wheel_runs_from_an_unrelated_folder(tmp_path):
    dist, site, work = tmp_path / "dist", tmp_path / "site", tmp_path / "work"
    work.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(REPO)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = dist.glob("cifar_sweep-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "cifar_sweep/conf/train.yaml" in names and "cifar_sweep/conf/model/resnet9.yaml" in names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "cifar-sweep = cifar_sweep.train:main" in entry_points and "cifar-leaderboard" in entry_points
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if k != "CIFAR_SWEEP_HOME"} | {"PYTHONPATH": str(site)}

    def run(*args):
        return subprocess.run([sys.executable, *args], cwd=work, env=env, capture_output=True, text=True, timeout=300)

    where = run("-c", "import cifar_sweep; print(cifar_sweep.__file__)")
    assert where.stdout.strip().startswith(str(site)), where.stdout + where.stderr
    trained = run("-m", "cifar_sweep.train", "data=synthetic", "model=logreg", "trainer.epochs=1")
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert (work / "runs" / "mlflow.db").is_file()
    board = run("-m", "cifar_sweep.commands.leaderboard")
    assert board.returncode == 0 and "logreg" in board.stdout, board.stdout + board.stderr
    assert not list(site.rglob("mlflow.db")) and not (site / "runs").exists()
