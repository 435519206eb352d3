"""Schedules: the right multiplier at the first step, at the end of warm-up and at the last step."""

import math

import pytest
import torch
from hydra.utils import instantiate

from cifar_sweep.training import schedules

TOTAL = 100


@pytest.mark.parametrize(
    "make, first, last",
    [
        (lambda: schedules.constant_multiplier(TOTAL), 1.0, 1.0),
        (lambda: schedules.linear_multiplier(TOTAL), 1.0, 0.01),
        (lambda: schedules.cosine_multiplier(TOTAL), 1.0, 0.5 * (1 + math.cos(math.pi * 0.99))),
        (lambda: schedules.step_multiplier(TOTAL, milestones=[0.5, 0.75], gamma=0.1), 1.0, 0.01),
        (lambda: schedules.onecycle_multiplier(TOTAL, peak=0.25, start=0.0, end=0.0), 0.0, 1 / 75),
    ],
)
def test_first_and_last_step(make, first, last):
    f = make()
    assert f(0) == pytest.approx(first)
    assert f(TOTAL - 1) == pytest.approx(last)


def test_linear_reaches_zero_after_last_step():
    # The ResNet exercise: 0.1 decaying linearly to 0 over the whole run, per step.
    assert schedules.linear_multiplier(TOTAL)(TOTAL) == 0.0


@pytest.mark.parametrize("name", ["constant_multiplier", "linear_multiplier", "cosine_multiplier", "step_multiplier"])
def test_warmup_ramps_then_hands_over(name):
    f = getattr(schedules, name)(TOTAL, warmup=0.1)
    assert f(0) == pytest.approx(0.1)          # (step + 1) / warm_steps
    assert f(9) == pytest.approx(1.0)          # last warm-up step reaches the base lr
    assert f(10) == pytest.approx(1.0)         # first step of the decay starts at the base lr
    assert f(5) < f(9)


def test_onecycle_peaks_at_peak():
    f = schedules.onecycle_multiplier(TOTAL, peak=0.3)
    assert f(30) == pytest.approx(1.0)
    assert max(f(s) for s in range(TOTAL)) == pytest.approx(1.0)


def test_step_milestones_after_warmup():
    f = schedules.step_multiplier(TOTAL, warmup=0.1, milestones=[0.5], gamma=0.5)
    assert f(10 + 39) == 1.0 and f(10 + 40) == 0.5


def test_bad_fraction_is_named():
    with pytest.raises(ValueError, match="schedule.warmup"):
        schedules.linear_multiplier(TOTAL, warmup=1.5)


def test_builders_drive_a_real_optimizer(compose_cfg):
    """Every conf/schedule option, composed for real, sets the lr of a torch optimizer per step."""
    for name in ["constant", "linear", "step", "cosine", "onecycle"]:
        cfg = compose_cfg([f"schedule={name}", "optimizer=sgd", "optimizer.lr=0.1"])
        param = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([param], lr=0.1)
        sched = instantiate(cfg.schedule)(opt, total_steps=TOTAL)
        lrs = []
        for _ in range(TOTAL):
            lrs.append(sched.get_last_lr()[0])
            opt.step()
            sched.step()
        assert all(0.0 <= lr <= 0.1 + 1e-12 for lr in lrs), name
        if name != "constant":
            assert lrs[-1] < 0.1, name
