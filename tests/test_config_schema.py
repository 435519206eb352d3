"""The typed config: every override is checked before anything starts, naming the key."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from cifar_sweep.config.rules import ConfigError, validate
from helpers import run_cli


@pytest.mark.parametrize("override, named", [
    ("+trainer.epoch=3", "trainer.epoch"),
    ("+unknown.key=1", "unknown"),
    ("+tracking.note=x", "tracking.note"),
    ("+data.augment.cropp=2", "data.augment.cropp"),
    ("+sweep.pruning.enable=true", "sweep.pruning.enable"),
])
def test_keys_forced_into_a_typed_block_are_refused(compose_cfg, override, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        validate(compose_cfg(["data=synthetic", override]))


@pytest.mark.parametrize("override", ["trainer.epochs=ten", "trainer.tta_flip=maybe", "data.val_size=1.5",
                                      "trainer.threads=two"])
def test_wrong_types_fail_while_composing(compose_cfg, override):
    with pytest.raises(Exception, match=override.split("=")[1]):
        compose_cfg(["data=synthetic", override])


@pytest.mark.parametrize("name", ["2024", "nan", "true", "1e3"])
def test_experiment_name_is_always_a_string(compose_cfg, name):
    from cifar_sweep.config.rules import keep_literal_names

    override = f"tracking.experiment={name}"
    cfg = compose_cfg(["data=synthetic", override])
    keep_literal_names(cfg, [override])
    validate(cfg)
    assert cfg.tracking.experiment == name and isinstance(cfg.tracking.experiment, str)


@pytest.mark.parametrize("override, named", [
    ("trainer.precision=fp8", "trainer.precision"),
    ("trainer.device=tpu", "trainer.device"),
    ("data.augment.flip=sometimes", "data.augment.flip"),
    ("trainer.ema_decay=1.5", "trainer.ema_decay"),
    ("sweep.pruning.min_siblings=0", "sweep.pruning.min_siblings"),
])
def test_ranges_a_type_cannot_say_are_checked(compose_cfg, override, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        validate(compose_cfg(["data=synthetic", override]))


def test_every_preset_passes_the_rules(compose_cfg):
    from helpers import CONF

    for preset in sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")):
        validate(compose_cfg([f"experiment={preset}", "data.root=" + str(CONF)]))


@pytest.mark.cli
def test_cli_refuses_a_stray_key_before_anything_starts(tmp_path):
    res = run_cli(["+trainer.epoch=3", "data=synthetic"], tmp_path, timeout=120)
    assert res.returncode != 0 and "trainer.epoch" in res.stderr
    assert not (tmp_path / "runs" / "mlflow.db").exists()


@pytest.mark.cli
def test_numeric_experiment_name_end_to_end(tmp_path):
    res = run_cli(["tracking.experiment=2024", "data=synthetic", "model=logreg", "trainer.epochs=1"], tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/runs/mlflow.db")
    experiment = client.get_experiment_by_name("2024")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.status for r in runs] == ["FINISHED"]
