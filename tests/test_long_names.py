"""Names at and past the file system's limit: every folder named after a user's name (the experiment's
checkpoint folder) stays one short, unique folder name, whatever the name's length or characters."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from cifar_sweep.training.resume import safe_folder_name
from helpers import run_cli

NAME_MAX = 255  # bytes in one path component: ext4, XFS, btrfs, tmpfs
PLAIN_298 = "e" * 298  # the name a user hit: `OSError: [Errno 36] File name too long`
MULTIBYTE_255 = "é" * 127 + "x"  # 2 bytes a character in UTF-8: 255 bytes, 128 characters
CJK_255 = "実験" * 42 + "x" * 3  # 3 bytes a character: 255 bytes


@pytest.mark.parametrize("name", [
    "x" * 100, "x" * 101, "x" * NAME_MAX, "x" * (NAME_MAX + 1), PLAIN_298, MULTIBYTE_255, CJK_255,
    "a/" * 200, "." * 300, "é" * 300,
], ids=["plain100", "plain101", "plain255", "plain256", "plain298", "utf8_255b", "cjk_255b", "slashes", "dots",
        "utf8_600b"])
def test_every_name_is_one_short_folder_that_can_be_made(tmp_path, name):
    folder = safe_folder_name(name)
    assert len(folder.encode()) <= 100 and folder.isascii()
    assert "/" not in folder and folder not in ("", ".", "..")
    (tmp_path / folder / ("a" * 40)).mkdir(parents=True)  # with the checkpoint folder's own name below it


def test_names_are_cut_with_a_hash_that_keeps_them_apart():
    assert safe_folder_name("cifar_sweep") == "cifar_sweep"  # a plain, short name is kept as it is
    assert safe_folder_name("x" * 100) == "x" * 100
    long_a, long_b = "x" * 200 + "a", "x" * 200 + "b"  # alike up to the cut
    assert safe_folder_name(long_a) != safe_folder_name(long_b)
    assert safe_folder_name(MULTIBYTE_255) != safe_folder_name("é" * 127 + "y")
    assert safe_folder_name(long_a) == safe_folder_name(long_a)  # the same name, the same folder: resume finds it
    assert safe_folder_name("x" * 101).startswith("x" * 60 + "-")


@pytest.mark.cli
@pytest.mark.parametrize("name, sweep", [(PLAIN_298, False), (MULTIBYTE_255, True)], ids=["plain298", "utf8_255b"])
def test_a_run_and_a_sweep_with_a_name_past_the_limit(tmp_path, name, sweep):
    args = ["data=synthetic", "data.n_train=300", "data.val_size=50", "data.n_test=50", "model=logreg",
            "trainer.epochs=2", "diagnostics.embedding=false", "tracking.misclassified_grid=false",
            f"tracking.experiment='{name}'"]
    res = run_cli(["-m", *args, "seed=0,1"] if sweep else args, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "File name too long" not in res.stdout + res.stderr
    client = MlflowClient(f"sqlite:///{tmp_path}/runs/mlflow.db")
    experiment = client.get_experiment_by_name(name)  # the name itself, uncut, in MLflow
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == (3 if sweep else 1) and {r.info.status for r in runs} == {"FINISHED"}
    for run in runs:
        if "checkpoint_dir" in run.data.tags:
            assert all(len(part.encode()) <= 100 for part in run.data.tags["checkpoint_dir"].split("/"))
