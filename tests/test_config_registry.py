"""The config folder is the registry: every option of every group composes and builds.

Parametrized over the files on disk, so a new YAML is tested without editing this file.
"""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from helpers import CONF


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _build(cfg):
    """Model, optimizer and schedule exactly as the loop builds them."""
    classes = len(cfg.data.classes) if cfg.data.get("classes") else 10
    model = instantiate(cfg.model, num_classes=classes)
    optimizer = instantiate(cfg.optimizer)(model)
    scheduler = instantiate(cfg.schedule)(optimizer, total_steps=50)
    return model, optimizer, scheduler


@pytest.mark.parametrize("group", ["model", "optimizer", "schedule", "data", "experiment"])
def test_group_has_options(group):
    assert _options(group), f"conf/{group}/ is empty"


@pytest.mark.parametrize("name", _options("optimizer"))
def test_optimizer_option_builds_and_steps(compose_cfg, name):
    cfg = compose_cfg([f"optimizer={name}", "model=logreg", "data=synthetic"])
    model, optimizer, scheduler = _build(cfg)
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.randn(8, 3, 32, 32)).logsumexp(1).mean().backward()
    optimizer.step()
    scheduler.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("name", _options("schedule"))
def test_schedule_option_builds(compose_cfg, name):
    cfg = compose_cfg([f"schedule={name}", "model=logreg", "data=synthetic"])
    _, optimizer, scheduler = _build(cfg)
    assert scheduler.get_last_lr()[0] <= cfg.optimizer.lr


@pytest.mark.parametrize("name", _options("data"))
def test_data_option_composes(compose_cfg, name):
    cfg = compose_cfg([f"data={name}"])
    assert "_target_" in cfg.data and "augment" in cfg.data and "val_size" in cfg.data


@pytest.mark.parametrize("name", _options("experiment"))
def test_experiment_preset_builds(compose_cfg, name):
    cfg = compose_cfg([f"experiment={name}"])
    model, optimizer, _ = _build(cfg)
    out = model.eval()(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, len(cfg.data.classes) if cfg.data.get("classes") else 10)
    assert cfg.trainer.epochs >= 1
    if cfg.reported.test_acc is not None:  # a write-up's recipe records what the write-up reported
        assert 0.0 < cfg.reported.test_acc < 1.0 and cfg.reported.source
