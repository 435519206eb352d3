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

The update itself is this module's, not `AveragedModel.update_parameters`: torch's copies the
`n_averaged` counter (a CPU tensor) to the device at every update, and on a GPU that copy waits
for every queued kernel. Here the counter is read on the host, where it lives, and the decay goes
in as a Python number: one `_foreach_lerp_` per update and no synchronisation.
"""

from __future__ import annotations

from itertools import chain

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel


class _HostCountedAverage(AveragedModel):
    """An AveragedModel of floats lerped towards the model by `current_weight(n)` (n: updates so far).

    The first update copies the model; integer buffers (batchnorm's num_batches_tracked) always
    follow the model. `n_averaged` stays a CPU tensor, so checkpoints keep torch's layout.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model, use_buffers=True)
        self.n_averaged = self.n_averaged.cpu()

    def current_weight(self, update: int) -> float:
        raise NotImplementedError

    def _pairs(self, model: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor], list[tuple]]:
        floats_avg, floats_cur, others = [], [], []
        mine = chain(self.module.parameters(), self.module.buffers())
        theirs = chain(model.parameters(), model.buffers())
        for averaged, current in zip(mine, theirs, strict=True):
            averaged, current = averaged.detach(), current.detach()
            if averaged.is_floating_point():
                floats_avg.append(averaged)
                floats_cur.append(current)  # same device and dtype: the average is a deep copy
            else:
                others.append((averaged, current))
        return floats_avg, floats_cur, others

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        averaged, current, others = self._pairs(model)
        done = int(self.n_averaged)  # a CPU tensor: reading it costs no device synchronisation
        if done == 0:
            torch._foreach_copy_(averaged, current)
        elif averaged:
            torch._foreach_lerp_(averaged, current, self.current_weight(done))
        for mine, theirs in others:
            mine.copy_(theirs)
        self.n_averaged += 1


class ExponentialAverage(_HostCountedAverage):
    """torch's EMA (`get_ema_multi_avg_fn(decay)`): avg <- avg + (1 - decay) * (weights - avg)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = float(decay)
        super().__init__(model)

    def current_weight(self, update: int) -> float:
        return 1.0 - self.decay


class Lookahead(_HostCountedAverage):
    """airbench's lookahead as an AveragedModel: ramped decay, and the model copies the average back."""

    def __init__(self, model: nn.Module, peak_decay: float, total_updates: int) -> None:
        self.peak_decay = float(peak_decay)
        self.total_updates = max(int(total_updates), 1)
        super().__init__(model)

    def decay_at(self, update: int) -> float:
        return self.peak_decay * (min(update, self.total_updates) / self.total_updates) ** 3

    def current_weight(self, update: int) -> float:
        return 1.0 - self.decay_at(update)

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        super().update_parameters(model)
        averaged, current, _ = self._pairs(model)
        torch._foreach_copy_(current, averaged)  # the model restarts from the average


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
    return ExponentialAverage(model, decay)
