"""The training loop: two functions that return data. The caller logs; nothing here talks to MLflow.

Hot-path rules: no host synchronisation per step. The running sums (loss, correct predictions) and
a "first non-finite step" marker stay on the device; the host reads them together every
`check_every` steps and at the end of the epoch (`Hardware.check_every`: every step on a CPU,
where a read costs nothing, every few dozen on a GPU, where each read drains the queue). A
diverging run therefore still stops early and names the step its loss first went non-finite. The
clock is read only after `Hardware.synchronize()`, so a span measures the work, not its launch.
Accuracies are exact fractions: integer counts divided on the host in float64.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cifar_sweep.data.batches import Standardize, eval_batches
from cifar_sweep.errors import CifarSweepError
from cifar_sweep.training.device import Hardware


class NonFiniteLossError(CifarSweepError, FloatingPointError):
    """A step's loss was NaN or infinite; the message (the run's failure_reason) names that step.

    `noticed_at` is the step whose host read found it (the same step on a CPU; up to
    `check_every - 1` steps later on a GPU, which never stops to look after every step).
    """

    def __init__(self, epoch: int, step: int, noticed_at: int | None = None):
        message = f"non-finite loss at epoch {epoch} step {step}"
        if noticed_at is not None and noticed_at != step:
            message += f" (found at the check after step {noticed_at})"
        super().__init__(message)
        self.epoch, self.step, self.noticed_at = epoch, step, noticed_at


@dataclass(frozen=True)
class Running:
    """The epoch so far, as the host reads it at a check: what a progress bar shows."""

    steps: int
    images: int
    loss_sum: float
    correct: int
    seconds: float

    @property
    def loss(self) -> float:
        return self.loss_sum / self.images if self.images else float("nan")

    @property
    def acc(self) -> float:
        return self.correct / self.images if self.images else float("nan")

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")

    def describe(self) -> str:
        return f"loss {self.loss:.4f}, acc {self.acc:.2%}, {self.images_per_s:,.0f} img/s"


@dataclass(frozen=True)
class EpochStats:
    loss: float
    acc: float  # correct / images, both integers: an exact fraction
    images: int
    steps: int
    seconds: float
    correct: int = 0
    first_step_s: float | None = None  # the first step alone (compile, kernel selection), when timed

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")


@dataclass(frozen=True)
class EvalResult:
    loss: float
    acc: float  # correct / images: an exact fraction
    probs: torch.Tensor   # (N, classes) float32 on the CPU: softmax of the (flip-averaged) logits
    labels: torch.Tensor  # (N,) int64 on the CPU
    seconds: float
    correct: int = 0

    @property
    def preds(self) -> torch.Tensor:
        return self.probs.argmax(1)


StepHook = Callable[[int, torch.Tensor], None]
CheckHook = Callable[[Running], None]


def _sum_dtype(device: torch.device) -> torch.dtype:
    """float64 where the device has it (exact counts and a steady loss sum); MPS has no float64,
    and float32 still holds any count below 2**24 exactly."""
    return torch.float32 if device.type == "mps" else torch.float64


class _Sums:
    """Device-side running sums of an epoch, read on the host only at checks."""

    def __init__(self, device: torch.device):
        self.dtype = _sum_dtype(device)
        self.loss = torch.zeros((), device=device, dtype=self.dtype)
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        self.bad_step = torch.full((), -1, device=device, dtype=torch.long)  # first non-finite step, -1: none

    def add(self, step: int, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        loss = loss.detach()
        # Marks the first bad step without looking: masked_fill_ with a device-side condition.
        self.bad_step.masked_fill_(~torch.isfinite(loss) & (self.bad_step < 0), step)
        self.loss += loss.to(self.dtype) * len(y)
        self.correct += (logits.detach().argmax(1) == y).sum()

    def read(self, hw: Hardware) -> tuple[float, int, int]:
        """One device-to-host copy of all three (float64 holds the counts exactly)."""
        with hw.intended_sync():
            loss, correct, bad = torch.stack([self.loss, self.correct.to(self.dtype),
                                              self.bad_step.to(self.dtype)]).tolist()
        return loss, int(correct), int(bad)


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
    check_every: int | None = None,
    on_check: CheckHook | None = None,
    time_first_step: bool = False,
) -> EpochStats:
    """One pass over `batches`; the scheduler steps after every optimizer step.

    `ema`, when given, is updated from the model every `ema_every` optimizer steps of the run
    (airbench's lookahead does it every 5: averaging less often costs less and, with a matching
    decay, ends in the same place). Every `check_every` steps (default `hw.check_every`) and at the
    end the host reads the running sums: a non-finite loss raises `NonFiniteLossError` then, and
    `on_check` sees the epoch so far. `time_first_step` also times the first step on its own (one
    more synchronisation), where a compile or the kernels' first selection shows.
    """
    check_every = max(int(check_every or hw.check_every), 1)
    model.train()
    sums = _Sums(hw.device)
    images = steps = 0
    first_step_s = None
    hw.synchronize()
    start = time.perf_counter()
    for x, y in batches:
        with hw.autocast():
            logits = model(x)
        # Loss in fp32 whatever the autocast dtype: bf16 log-softmax loses the small differences.
        loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
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
        sums.add(steps, loss, logits, y)
        images += len(y)
        steps += 1
        if time_first_step and steps == 1:
            hw.synchronize()
            first_step_s = time.perf_counter() - start
        if on_step is not None:
            on_step(steps, loss)
        if steps % check_every == 0:
            _check(sums, hw, epoch, steps, images, start, on_check)
    if images == 0:
        raise ValueError("the training split produced no batches")
    hw.synchronize()
    seconds = time.perf_counter() - start
    loss_sum, correct = _check(sums, hw, epoch, steps, images, start, None)
    return EpochStats(loss=loss_sum / images, acc=correct / images, images=images, steps=steps, seconds=seconds,
                      correct=correct, first_step_s=first_step_s)


def _check(sums: _Sums, hw: Hardware, epoch: int, steps: int, images: int, start: float,
           on_check: CheckHook | None) -> tuple[float, int]:
    loss_sum, correct, bad = sums.read(hw)
    if bad >= 0:
        raise NonFiniteLossError(epoch, bad, noticed_at=steps - 1)
    if on_check is not None:
        on_check(Running(steps, images, loss_sum, correct, time.perf_counter() - start))
    return loss_sum, correct


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
    """Loss, accuracy and class probabilities of `model` on a whole split, in its stored order.

    Everything stays on the device until one copy at the end (no host read per batch).
    """
    model.eval()
    hw.synchronize()
    start = time.perf_counter()
    dtype = _sum_dtype(hw.device)
    loss_sum = torch.zeros((), device=hw.device, dtype=dtype)
    correct = torch.zeros((), device=hw.device, dtype=torch.long)
    probs = []
    for x, y in eval_batches(images, labels, batch_size, standardize):
        logits = predict_logits(model, x, hw, tta_flip)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").to(dtype)
        p = logits.softmax(1)
        # Counted from the probabilities, as `EvalResult.preds` and the per-class figures are.
        correct += (p.argmax(1) == y).sum()
        probs.append(p)
    with hw.intended_sync():
        all_probs, cpu_labels = torch.cat(probs).cpu(), labels.cpu()
        total_loss, total_correct = torch.stack([loss_sum, correct.to(dtype)]).tolist()
    seconds = time.perf_counter() - start
    n, total_correct = len(labels), int(total_correct)
    return EvalResult(loss=total_loss / n, acc=total_correct / n, probs=all_probs, labels=cpu_labels,
                      seconds=seconds, correct=total_correct)
