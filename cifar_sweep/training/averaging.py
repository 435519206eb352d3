"""Weight averages evaluated instead of the raw weights: an EMA, or airbench's lookahead.

Both are torch's own `AveragedModel` (a copy of the model, its `n_averaged` counter, state_dict for
checkpoints), updated by the engine every `trainer.ema_every` optimizer steps; the loop evaluates
and saves `.module`, the average.

- EMA (`trainer.ema_decay=d`): avg <- d * avg + (1 - d) * weights; training never sees the average.
- Lookahead (`trainer.lookahead=true`, as airbench94 trains): the same update, but the decay ramps
  from 0 up to `ema_decay` as (t / T)^3 over the run's T updates, and after every update the model
  restarts from the average. Early on the average simply follows the weights (nothing to smooth
  yet); late, at a small learning rate, the pull back towards the average damps the noise of the
  last steps. torch.optim has no lookahead, hence this small subclass.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class Lookahead(AveragedModel):
    """airbench's lookahead as an AveragedModel: ramped decay, and the model copies the average back."""

    def __init__(self, model: nn.Module, peak_decay: float, total_updates: int) -> None:
        self.peak_decay = float(peak_decay)
        self.total_updates = max(int(total_updates), 1)
        super().__init__(model, avg_fn=self._average, use_buffers=True)

    def decay_at(self, update: int) -> float:
        return self.peak_decay * (min(update, self.total_updates) / self.total_updates) ** 3

    def _average(self, averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        if not averaged.is_floating_point():  # batchnorm's num_batches_tracked: follow the model
            return current
        return averaged.lerp(current.to(averaged.dtype), 1.0 - self.decay_at(int(num_averaged)))

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        super().update_parameters(model)
        averaged = self.module.state_dict()
        for name, value in model.state_dict().items():
            if value.is_floating_point():
                value.copy_(averaged[name])


def weight_average(model: nn.Module, decay: float | None, lookahead: bool = False,
                   total_updates: int = 1) -> AveragedModel | None:
    """The average trainer.ema_decay / trainer.lookahead ask for, or None (evaluate the weights)."""
    if decay is None:
        if lookahead:
            raise ValueError("trainer.lookahead=true needs trainer.ema_decay (its peak decay, e.g. 0.77)")
        return None
    if not 0.0 < decay < 1.0:
        raise ValueError(f"trainer.ema_decay={decay} must be in (0, 1), or null to turn it off")
    if lookahead:
        return Lookahead(model, decay, total_updates)
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
