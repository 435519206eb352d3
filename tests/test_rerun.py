"""`cifar-rerun RUN [overrides]`, and the `command` tag every run carries."""

from __future__ import annotations

import shlex

import pytest
import yaml
from helpers import CONF, run_cli
from omegaconf import OmegaConf

from cifar_sweep.commands import rerun
from cifar_sweep.config.identity import flatten

# A run whose values need the override grammar's care: a name with a comma and spaces (Hydra would
# read it as a sweep), an experiment name that looks like a number, a non-default data size.
ORIGINAL = ["data=synthetic", "trainer.epochs=2", "model=logreg", "optimizer.lr=0.01", "data.n_train=1000",
            "tracking.experiment=2024", "tracking.run_name='lr 0.01, take 2'"]


@pytest.mark.parametrize("value", ["plain", "2024", "a b", "a,b", "it's", "back\\slash", "${oops}", "", "null",
                                   "sqlite:////tmp/x y/mlflow.db", 1, 0.001, 1e-08, True, None, [0.9, 0.999],
                                   ["cat", "dog, wild"], []])
def test_override_value_reads_back_as_the_value(value):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    text = rerun.override_value(value)
    parsed = OverridesParser.create().parse_override(f"key={text}")
    assert not parsed.is_sweep_override()
    assert rerun._same(parsed.value(), value), text


PRESETS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("overrides", [[f"experiment={p}"] for p in PRESETS] + [
    ["model=torchvision", "model.arch=resnet18", "trainer.ema_decay=0.99"],
    ["data.classes=[cat,dog]", "tracking.experiment=2024", "optimizer=sgd", "optimizer.lr=0.05"],
    ["data=synthetic", "schedule=onecycle", "tracking.run_name='a, b'", "seed=3"],
], ids=lambda o: " ".join(o))
def test_the_command_composes_to_the_logged_config(compose_cfg, overrides):
    """What training logs (the resolved config, the group choices as tags) comes back as a command
    line that composes to it: `rerun_overrides` composes and compares, and raises otherwise."""
    cfg = compose_cfg(overrides, return_hydra_config=True)
    choices = dict(cfg.hydra.runtime.choices)
    tags = {tag: choices.get(group) for group, tag in rerun.GROUP_TAGS.items()}
    resolved = OmegaConf.to_container(cfg, resolve=False)
    resolved.pop("hydra")
    logged = flatten({k: v for k, v in OmegaConf.to_container(OmegaConf.create(resolved), resolve=True).items()
                      if k != "paths"})
    command, new = rerun.rerun_overrides(logged, tags, ["trainer.epochs=1"], None, "test")
    assert new == [] and command[-2:] == ["resume=false", "trainer.epochs=1"]
    assert all(f"{group}={choice}" in command for group, choice in choices.items()
               if group in rerun.GROUP_TAGS and choice)


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    home = tmp_path_factory.mktemp("rerun_home")
    res = run_cli(ORIGINAL, home)
    assert res.returncode == 0, res.stderr[-3000:]
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{home / 'runs' / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("2024").experiment_id
    (run,) = client.search_runs([exp])
    return home, uri, client, run


def runs_of(client, experiment="2024"):
    exp = client.get_experiment_by_name(experiment).experiment_id
    return client.search_runs([exp], order_by=["attributes.start_time"])


@pytest.mark.cli
def test_every_run_carries_the_command_that_reproduces_it(logged):
    _, _, _, run = logged
    assert run.data.tags["command"] == "cifar-sweep " + " ".join(shlex.quote(a) for a in ORIGINAL)
    assert "rerun_of" not in run.data.tags


@pytest.mark.cli
def test_rerun_trains_the_same_config_as_a_new_run(logged):
    home, _, client, old = logged
    dry = run_cli([old.info.run_id[:8], "trainer.epochs=1", "--dry-run"], home, module="cifar_sweep.commands.rerun")
    assert dry.returncode == 0, dry.stderr
    command = dry.stdout.strip()
    assert command.startswith("cifar-sweep model=logreg optimizer=adam schedule=constant data=synthetic ")
    assert len(runs_of(client)) == 1  # a dry run runs nothing

    res = run_cli([old.info.run_id[:8], "trainer.epochs=1"], home, module="cifar_sweep.commands.rerun")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "reproduce run" in res.stdout + res.stderr
    runs = runs_of(client)
    assert len(runs) == 2
    new = runs[1]
    assert new.info.status == "FINISHED" and new.info.run_name == "lr 0.01, take 2"
    assert new.data.tags["rerun_of"] == old.info.run_id
    assert new.data.tags["command"] == command
    # The same resolved config, but for the override and the runtime key that makes it a new run.
    before, after = old.data.params, new.data.params
    differ = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert differ == {"trainer.epochs", "resume"}, {k: (before.get(k), after.get(k)) for k in differ}
    assert after["trainer.epochs"] == "1" and after["resume"] == "False"
    assert new.data.tags["config_hash"] != old.data.tags["config_hash"]  # epochs are part of the config


@pytest.mark.cli
def test_rerun_refuses_keys_an_older_version_logged(logged, capsys):
    _, uri, client, old = logged
    config = yaml.safe_load(_config_text(client, old.info.run_id))
    config["trainer"]["old_knob"] = 3
    config["legacy"] = {"x": 1}
    made = client.create_run(old.info.experiment_id, run_name="older version",
                             tags={k: old.data.tags[k] for k in ("model", "optimizer", "schedule", "data")})
    client.log_text(made.info.run_id, yaml.safe_dump(config), "config.yaml")
    client.set_terminated(made.info.run_id, "FINISHED")

    code = rerun.main([made.info.run_id[:8], "--dry-run", "--tracking-uri", uri])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert "logged by an older version: legacy.x, trainer.old_knob are no longer in the config" in err
    client.delete_run(made.info.run_id)


@pytest.mark.cli
def test_rerun_dry_run_in_process(logged, capsys):
    _, uri, client, old = logged
    # Keys added to the config since a run take today's defaults, and the command says which.
    config = yaml.safe_load(_config_text(client, old.info.run_id))
    del config["trainer"]["tta_flip"]
    made = client.create_run(old.info.experiment_id, run_name="before tta_flip",
                             tags={k: old.data.tags[k] for k in ("model", "optimizer", "schedule", "data")})
    client.log_text(made.info.run_id, yaml.safe_dump(config), "config.yaml")
    code = rerun.main([made.info.run_id, "--dry-run", "model=mlp", "--tracking-uri", uri])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "keys new since run" in err and "trainer.tta_flip" in err
    words = shlex.split(out.strip())
    assert "model=mlp" in words and "model=logreg" not in words  # a group pick replaces the run's
    assert "optimizer.lr=0.01" in words and "resume=false" in words
    client.delete_run(made.info.run_id)


@pytest.mark.cli
def test_rerun_asks_for_a_group_choice_the_run_did_not_tag(logged, capsys):
    _, uri, client, old = logged
    made = client.create_run(old.info.experiment_id, run_name="no model tag",
                             tags={k: old.data.tags[k] for k in ("optimizer", "schedule", "data")})
    client.log_text(made.info.run_id, _config_text(client, old.info.run_id), "config.yaml")
    code = rerun.main([made.info.run_id, "--dry-run", "--tracking-uri", uri])
    err = capsys.readouterr().err
    assert code == 2 and "has no tag saying which model option it used" in err and "model=<option>" in err
    code = rerun.main([made.info.run_id, "--dry-run", "--tracking-uri", uri, "model=logreg"])
    out = capsys.readouterr().out
    assert code == 0 and "model=logreg" in out
    client.delete_run(made.info.run_id)


def test_rerun_without_a_store_is_one_line(capsys, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = rerun.main(["deadbeef", "--tracking-uri", uri])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no MLflow store at" in err


@pytest.mark.cli
def test_rerun_refuses_unknown_runs_and_sweep_flags(logged, capsys):
    _, uri, _, old = logged
    code = rerun.main(["deadbeef", "--tracking-uri", uri])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no run 'deadbeef'" in err
    code = rerun.main(["--tracking-uri", uri, old.info.run_id, "--", "-m"])
    err = capsys.readouterr().err
    assert code == 2 and "'-m' is not a key=value override" in err


def _config_text(client, run_id):
    from cifar_sweep.tracking.lookup import read_text

    return read_text(client, run_id, "config.yaml")


@pytest.mark.cli
def test_sweep_jobs_carry_their_own_command(tmp_path):
    res = run_cli(["-m", "data=synthetic", "trainer.epochs=1", "model=logreg", "optimizer.lr=0.01,0.02"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("cifar_sweep").experiment_id
    jobs = [r for r in client.search_runs([exp]) if r.data.tags.get("sweep_parent") != "true"]
    commands = sorted(r.data.tags["command"] for r in jobs)
    assert commands == [f"cifar-sweep data=synthetic trainer.epochs=1 model=logreg optimizer.lr={lr}"
                        for lr in ("0.01", "0.02")]
    # A job reruns alone, with its own value of the swept key.
    job = next(r for r in jobs if r.data.params["optimizer.lr"] == "0.02")
    dry = run_cli([job.info.run_id[:8], "--dry-run"], tmp_path, module="cifar_sweep.commands.rerun")
    assert dry.returncode == 0 and "optimizer.lr=0.02" in dry.stdout.split(), dry.stderr
