"""Learning-rate schedules, stepped once per optimizer step.

Each schedule is a pure multiplier `f(step) -> factor of the base lr` built from the run's total
step count, wrapped in torch's own `LambdaLR` so the optimizer, checkpointing and resuming all go
through the standard scheduler API. Keeping the maths in plain functions makes them testable
without an optimizer. Fractions (`warmup`, `peak`, `milestones`) are of all steps of the run, so a
schedule means the same thing whatever the epoch count or batch size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch.optim.lr_scheduler import LambdaLR

Multiplier = Callable[[int], float]


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"schedule.{name}={value} must be a fraction of all steps in [0, 1)")


def with_warmup(decay: Multiplier, total_steps: int, warmup: float) -> Multiplier:
    """Ramp linearly to 1 over the first `warmup` fraction of steps, then follow `decay`.

    `decay` receives the step counted from the end of warm-up, so its own shape is unchanged.
    """
    _check_fraction("warmup", warmup)
    warm = int(round(warmup * total_steps))
    if warm == 0:
        return decay
    # Start at 1/warm, not 0: a zero lr on step 0 would waste the first batch.
    return lambda step: (step + 1) / warm if step < warm else decay(step - warm)


def _progress(total: int) -> Callable[[int], float]:
    """Fraction of the (post-warm-up) run done at `step`: 0 on the first step, 1 after the last."""
    return lambda step: min(step, total) / max(total, 1)


def constant_multiplier(total_steps: int, warmup: float = 0.0) -> Multiplier:
    return with_warmup(lambda step: 1.0, total_steps, warmup)


def linear_multiplier(total_steps: int, warmup: float = 0.0, end: float = 0.0) -> Multiplier:
    warm = int(round(warmup * total_steps))
    done = _progress(total_steps - warm)
    return with_warmup(lambda step: 1.0 + (end - 1.0) * done(step), total_steps, warmup)


def cosine_multiplier(total_steps: int, warmup: float = 0.0, end: float = 0.0) -> Multiplier:
    warm = int(round(warmup * total_steps))
    done = _progress(total_steps - warm)
    return with_warmup(
        lambda step: end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * done(step))),
        total_steps,
        warmup,
    )


def step_multiplier(
    total_steps: int, warmup: float = 0.0, milestones: Sequence[float] = (0.5, 0.75), gamma: float = 0.1
) -> Multiplier:
    for m in milestones:
        _check_fraction("milestones", m)
    warm = int(round(warmup * total_steps))
    marks = sorted(int(round(m * total_steps)) - warm for m in milestones)
    return with_warmup(lambda step: gamma ** sum(step >= m for m in marks), total_steps, warmup)


def onecycle_multiplier(total_steps: int, peak: float = 0.25, start: float = 0.0, end: float = 0.0) -> Multiplier:
    """Piecewise linear start -> 1 at `peak` -> end (the DAWNBench ResNet-9 / airbench shape).

    The rise is this schedule's warm-up, so it takes no separate `warmup`.
    """
    _check_fraction("peak", peak)
    top = max(int(round(peak * total_steps)), 1)
    rest = max(total_steps - top, 1)

    def multiplier(step: int) -> float:
        if step < top:
            return start + (1.0 - start) * step / top
        return 1.0 + (end - 1.0) * min(step - top, rest) / rest

    return multiplier


# Builders named by conf/schedule/*.yaml (`_partial_`): the loop completes them with the optimizer
# and the run's total step count.

def constant(optimizer: torch.optim.Optimizer, total_steps: int, warmup: float = 0.0) -> LambdaLR:
    return LambdaLR(optimizer, constant_multiplier(total_steps, warmup))


def linear(optimizer: torch.optim.Optimizer, total_steps: int, warmup: float = 0.0, end: float = 0.0) -> LambdaLR:
    return LambdaLR(optimizer, linear_multiplier(total_steps, warmup, end))


def cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup: float = 0.0, end: float = 0.0) -> LambdaLR:
    return LambdaLR(optimizer, cosine_multiplier(total_steps, warmup, end))


def step(
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    warmup: float = 0.0,
    milestones: Sequence[float] = (0.5, 0.75),
    gamma: float = 0.1,
) -> LambdaLR:
    return LambdaLR(optimizer, step_multiplier(total_steps, warmup, milestones, gamma))


def onecycle(
    optimizer: torch.optim.Optimizer, total_steps: int, peak: float = 0.25, start: float = 0.0, end: float = 0.0
) -> LambdaLR:
    return LambdaLR(optimizer, onecycle_multiplier(total_steps, peak, start, end))
