"""The training loop: two functions that return data. The caller logs; nothing here talks to MLflow.

Hot-path rules: no host sync per step except the non-finite-loss check (free on the CPU, one small
sync on a GPU, and it is what lets a diverging run stop within one step), running sums stay on the
device, and the clock is read only after `Hardware.synchronize()`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cifar_sweep.data.batches import Standardize, eval_batches
from cifar_sweep.training.device import Hardware


class NonFiniteLossError(FloatingPointError):
    """Raised as soon as a step's loss is NaN or infinite; the message is the run's failure_reason."""

    def __init__(self, epoch: int, step: int):
        super().__init__(f"non-finite loss at epoch {epoch} step {step}")
        self.epoch, self.step = epoch, step


@dataclass(frozen=True)
class EpochStats:
    loss: float
    acc: float
    images: int
    steps: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


@dataclass(frozen=True)
class EvalResult:
    loss: float
    acc: float
    probs: torch.Tensor   # (N, classes) float32 on the CPU: softmax of the (flip-averaged) logits
    labels: torch.Tensor  # (N,) int64 on the CPU
    seconds: float

    @property
    def preds(self) -> torch.Tensor:
        return self.probs.argmax(1)


StepHook = Callable[[int, torch.Tensor], None]


def train_one_epoch(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    hw: Hardware,
    epoch: int,
    label_smoothing: float = 0.0,
    scaler: torch.amp.GradScaler | None = None,
    on_step: StepHook | None = None,
    ema: torch.optim.swa_utils.AveragedModel | None = None,
    ema_every: int = 1,
) -> EpochStats:
    """One pass over `batches`; the scheduler steps after every optimizer step.

    `ema`, when given, is updated from the model every `ema_every` optimizer steps of the run
    (airbench's lookahead does it every 5: averaging less often costs less and, with a matching
    decay, ends in the same place).
    """
    model.train()
    loss_sum = torch.zeros((), device=hw.device)
    correct = torch.zeros((), device=hw.device, dtype=torch.long)
    images = steps = 0
    hw.synchronize()
    start = time.perf_counter()
    for x, y in batches:
        with hw.autocast():
            logits = model(x)
        # Loss in fp32 whatever the autocast dtype: bf16 log-softmax loses the small differences.
        loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(epoch, steps)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        # The scheduler counts optimizer steps over the whole run (and resumes with it), so the
        # average keeps its period across epoch boundaries.
        if ema is not None and scheduler.last_epoch % ema_every == 0:
            ema.update_parameters(model)
        loss_sum += loss.detach() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        images += len(y)
        steps += 1
        if on_step is not None:
            on_step(steps, loss)
    hw.synchronize()
    seconds = time.perf_counter() - start
    if images == 0:
        raise ValueError("the training split produced no batches")
    return EpochStats(
        loss=loss_sum.item() / images, acc=correct.item() / images, images=images, steps=steps, seconds=seconds
    )


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, hw: Hardware, tta_flip: bool = False) -> torch.Tensor:
    with hw.autocast():
        logits = model(x).float()
        if tta_flip:
            logits = 0.5 * (logits + model(x.flip(3)).float())
    return logits


@torch.no_grad()
def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    standardize: Standardize,
    hw: Hardware,
    tta_flip: bool = False,
) -> EvalResult:
    """Loss, accuracy and class probabilities of `model` on a whole split, in its stored order."""
    model.eval()
    hw.synchronize()
    start = time.perf_counter()
    loss_sum = torch.zeros((), device=hw.device)
    probs = []
    for x, y in eval_batches(images, labels, batch_size, standardize):
        logits = predict_logits(model, x, hw, tta_flip)
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        probs.append(logits.softmax(1).cpu())
    hw.synchronize()
    seconds = time.perf_counter() - start
    all_probs = torch.cat(probs)
    cpu_labels = labels.cpu()
    acc = (all_probs.argmax(1) == cpu_labels).float().mean().item()
    return EvalResult(loss=loss_sum.item() / len(labels), acc=acc, probs=all_probs, labels=cpu_labels, seconds=seconds)
