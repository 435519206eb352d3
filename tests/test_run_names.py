"""Run names that tell a sweep's jobs apart within the characters a table shows, and the sweep's own name."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from cifar_sweep.config.identity import run_name
from cifar_sweep.sweeps.naming import sweep_label, varying_keys

CHOICES = {"model": "logreg", "optimizer": "adam", "schedule": "constant", "data": "synthetic"}
# One job of `cifar-sweep -m data=synthetic model=logreg trainer.epochs=1 optimizer.lr=<two values> seed=0,1`
JOB = ["data=synthetic", "model=logreg", "trainer.epochs=1", "diagnostics.embedding=false",
       "optimizer.lr=0.00022671695326816903", "seed=1"]


def test_what_differs_between_the_jobs_leads_the_name():
    name = run_name(CHOICES, JOB, "synthetic", varying=["optimizer.lr", "seed"])
    assert name == "lr=0.000227 seed=1 [synthetic] logreg adam epochs=1"
    # What a table that cuts names at 22 characters still shows of two jobs of the sweep.
    other = run_name(CHOICES, [*JOB[:4], "optimizer.lr=0.0013894954943731374", "seed=1"], "synthetic",
                     varying=["optimizer.lr", "seed"])
    assert name[:22] != other[:22] and other.startswith("lr=0.00139 seed=1 ")


def test_a_single_run_keeps_its_data_and_model_first():
    assert run_name(CHOICES, JOB, "synthetic") == "[synthetic] logreg adam epochs=1 lr=0.000227 seed=1"
    assert run_name(CHOICES, ["model=logreg", "trainer.epochs=30"], "cifar10-jpeg") == "logreg adam epochs=30"


def test_a_varying_group_pick_leads_as_the_option_it_picks():
    choices = {**CHOICES, "model": "mlp"}
    assert run_name(choices, ["data=synthetic", "model=mlp", "trainer.epochs=2"], "synthetic",
                    varying=["model"]) == "mlp [synthetic] adam epochs=2"
    # A sweep over data names every job's dataset, real CIFAR-10 too.
    assert run_name({**CHOICES, "data": "folder"}, ["data=folder"], "cifar10-jpeg",
                    varying=["data"]) == "[cifar10-jpeg] logreg adam"


def test_a_sweep_over_classes_leads_with_the_dataset_it_makes():
    job = ["data=synthetic", "data.classes=[bird,frog]", "trainer.epochs=2"]
    assert run_name(CHOICES, job, "synthetic[bird,frog]", varying=["data.classes"]) == (
        "[synthetic[bird,frog]] logreg adam epochs=2")
    assert run_name(CHOICES, job, "synthetic[bird,frog]") == "[synthetic[bird,frog]] logreg adam epochs=2"


@pytest.mark.parametrize("override, shown", [
    ("optimizer.lr=0.00022671695326816903", "lr=0.000227"),
    ("optimizer.lr=1e-4", "lr=0.0001"),
    ("optimizer.lr=0.1", "lr=0.1"),
    ("optimizer.betas=[0.9,0.99912]", "betas=[0.9,0.999]"),
    ("trainer.batch_size=512", "batch_size=512"),
    ("data.val_size=0", "val_size=0"),
    ("+optimizer.nesterov=true", "nesterov=true"),
])
def test_values_are_short(override, shown):
    assert run_name(CHOICES, [override], "cifar10-jpeg") == f"logreg adam {shown}"


def test_keys_keep_their_group_when_two_would_read_alike():
    name = run_name(CHOICES, ["model.width=64", "data.width=3"], "cifar10-jpeg")
    assert name == "logreg adam model.width=64 data.width=3"


def test_plumbing_is_left_out():
    name = run_name(CHOICES, ["tracking.uri=sqlite:///x.db", "hydra.verbose=true", "diagnostics.embedding=false",
                              "trainer.progress=false", "sweep.force=true", "data.root=/data"], "cifar10-jpeg")
    assert name == "logreg adam"


def test_the_preset_names_the_run():
    choices = {"experiment": "resnet18", "model": "resnet18", "optimizer": "sgd"}
    assert run_name(choices, ["experiment=resnet18", "seed=3"], "cifar10-jpeg", varying=["seed"]) == "seed=3 resnet18"
    assert run_name({}, [], None) == "run"


def test_sweep_label_says_when_the_sweep_started(tmp_path):
    assert sweep_label("/home/me/runs/multirun/2026-12-04/03-41-07") == "12-04 03:41:07"
    assert sweep_label("/home/me/runs/multirun/lr/search") == "lr/search"
    assert sweep_label(tmp_path / "lr_search") == "lr_search"


def _saved_sweep(folder, task, params=None):
    folder.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create({"hydra": {"overrides": {"task": task}, "sweeper": {"params": params}}}),
                   folder / "multirun.yaml")
    return folder


def test_varying_keys_come_from_the_saved_sweep(tmp_path):
    grid = _saved_sweep(tmp_path / "grid", ["data=synthetic", "model=logreg,mlp", "trainer.epochs=1", "seed=0,1"])
    assert varying_keys(grid) == ("model", "seed")
    optuna = _saved_sweep(tmp_path / "optuna", ["model=logreg", "optimizer.lr=tag(log, interval(1e-4, 1e-1))"],
                          {"optimizer.weight_decay": "interval(0, 0.01)", "+trainer.batch_size": "64,128"})
    assert varying_keys(optuna) == ("optimizer.lr", "optimizer.weight_decay", "trainer.batch_size")


def test_varying_keys_of_no_saved_sweep_are_none(tmp_path):
    assert varying_keys(tmp_path / "missing") == ()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "multirun.yaml").write_text("hydra: [unclosed")
    assert varying_keys(tmp_path / "bad") == ()
