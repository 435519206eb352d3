"""The epochs of one run: train, evaluate, checkpoint, then hand the epoch to the caller.

Plain objects in, a history out. What happens with an epoch's numbers (logging, printing, image
grids, pruning) is the caller's `on_epoch`, so this module knows neither the config nor the
tracker. The checkpoint is written before `on_epoch`: a kill between the two re-logs that epoch
from the checkpoint on resume, never twice.
"""

from __future__ import annotations

import gc
import logging
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cifar_sweep.data.batches import Standardize, TrainBatches
from cifar_sweep.errors import CifarSweepError
from cifar_sweep.training import checkpoint as ckpt
from cifar_sweep.training.compile_stats import CompileWatch
from cifar_sweep.training.device import Hardware
from cifar_sweep.training.engine import CheckHook, EvalResult, StepHook, evaluate, train_one_epoch

log = logging.getLogger(__name__)

# on_epoch(epoch, metrics, val) -> True to stop early (the run still ends normally).
EpochHook = Callable[[int, dict[str, float], EvalResult], bool]


@dataclass
class Trainee:
    """Everything the epochs change, and what a checkpoint must hold to resume it bit-exactly."""

    model: nn.Module
    step_model: nn.Module  # the model, or its torch.compile wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    batches: TrainBatches
    generator: torch.Generator
    scaler: torch.amp.GradScaler | None = None
    ema: torch.optim.swa_utils.AveragedModel | None = None

    @property
    def eval_model(self) -> nn.Module:
        """The weights evaluated: the weight average when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def stateful(self) -> dict[str, Any]:
        return {"model": self.model, "optimizer": self.optimizer, "scheduler": self.scheduler,
                "ema": self.ema, "scaler": self.scaler}

    def state(self, history: list[dict], run_id: str, identity: dict[str, Any]) -> dict[str, Any]:
        return {
            **{k: v.state_dict() for k, v in self.stateful().items() if v is not None},
            "rng": ckpt.rng_state(self.generator),
            "history": history,
            "epoch": len(history) - 1,
            "run_id": run_id,
            **identity,
        }

    def restore(self, found: ckpt.Found) -> list[dict[str, float]]:
        """Load a checkpoint into these freshly built objects; return its per-epoch history."""
        state = found.state
        for key, obj in self.stateful().items():
            if obj is not None:
                if key not in state:
                    raise ckpt.CheckpointError(f"checkpoint {found.path} has no {key!r} state; it cannot resume this run")
                obj.load_state_dict(state[key])
        ckpt.restore_rng(state["rng"], self.generator)
        return [dict(h) for h in state["history"]]


@dataclass(frozen=True)
class EvalSet:
    images: torch.Tensor  # uint8, on the device
    labels: torch.Tensor
    batch_size: int
    standardize: Standardize
    tta_flip: bool

    def evaluate(self, model: nn.Module, hw: Hardware) -> EvalResult:
        return evaluate(model, self.images, self.labels, self.batch_size, self.standardize, hw, self.tta_flip)


def run_epochs(
    trainee: Trainee,
    hw: Hardware,
    val: EvalSet,
    history: list[dict[str, float]],
    epochs: int,
    checkpoint_dir: Path,
    checkpoint_record: Callable[[list[dict]], dict[str, Any]],
    on_epoch: EpochHook,
    label_smoothing: float = 0.0,
    ema_every: int = 1,
    progress: Callable[[Iterable, int], Iterable] = lambda batches, epoch: batches,
    step_hook: Callable[[int], StepHook | None] = lambda epoch: None,
) -> EvalResult | None:
    """Train from epoch len(history) to `epochs`, appending to `history`; return the last evaluation."""
    started = time.perf_counter()
    elapsed_before = history[-1]["elapsed_s"] if history else 0.0
    result = None
    first = len(history)
    for epoch in range(first, epochs):
        trainee.model.on_epoch_start(epoch)
        trainee.batches.set_epoch(epoch)
        bar = progress(trainee.batches, epoch)
        # A compiled model's compiles and recompiles in this epoch, counted apart from its time.
        compiles = CompileWatch() if trainee.step_model is not trainee.model else None
        try:
            stats = train_one_epoch(
                trainee.step_model, bar, trainee.optimizer, trainee.scheduler, hw,
                epoch, label_smoothing=label_smoothing, scaler=trainee.scaler, on_step=step_hook(epoch),
                ema=trainee.ema, ema_every=ema_every, on_check=running_postfix(bar),
                # This process's first epoch pays the compile and the kernels' first selection: its
                # first step is timed on its own, so that cost is reported apart.
                time_first_step=epoch == first,
            )
        except (torch.OutOfMemoryError, RuntimeError) as err:
            if not is_out_of_memory(err):
                raise
            release_accelerator_memory(hw)  # so the next job in this process starts clean
            raise OutOfMemory(f"out of memory on {hw.device} at trainer.batch_size={trainee.batches.batch_size}; "
                              "lower trainer.batch_size or use a smaller model") from err
        result = val.evaluate(trainee.eval_model, hw)
        metrics = {
            "train_loss": stats.loss, "train_acc": stats.acc, "val_loss": result.loss, "val_acc": result.acc,
            "lr": trainee.scheduler.get_last_lr()[0], "epoch_time_s": stats.seconds,
            "images_per_s": stats.images_per_s, "eval_time_s": result.seconds,
            "elapsed_s": elapsed_before + time.perf_counter() - started,
        }
        if stats.first_step_s is not None:
            metrics["first_step_s"] = stats.first_step_s
        if compiles is not None:
            compiled = compiles.read()
            metrics.update(compiled.metrics())
            if compiled.recompiles:  # expected in the first epoch (its last, partial batch), a cost later
                log.log(logging.WARNING if epoch > first else logging.INFO,
                        "epoch %d: %d recompile(s) of the compiled model, %.1f s of compiling in its %.1f s: %s",
                        epoch, compiled.recompiles, compiled.seconds, stats.seconds, "; ".join(compiled.reasons))
        history.append(metrics)
        ckpt.save(checkpoint_dir, checkpoint_record(history))
        if on_epoch(epoch, metrics, result):
            break
    return result


@dataclass(frozen=True)
class Timing:
    """Where a run's epochs spent their time, the first epoch apart from the steady ones after it.

    The first epoch pays one-off costs (a compile, the kernels' first selection, the allocator
    growing to size); a steady figure that averaged it in would make short runs look slow.
    """

    train_s: float
    eval_s: float
    epochs: int
    first_epoch_s: float
    steady_epoch_s: float | None  # median of the epochs after the first; None for a 1-epoch run
    first_step_s: float | None
    compile_s: float | None = None  # a compiled model's compiling, inside the epochs' times; None: eager
    recompiles: int | None = None  # of which recompiles (after the first compile of each frame)
    # Mean images/s of the epochs after the first (the first alone for a 1-epoch run): logged as one
    # summary metric so a leaderboard of thousands of runs needs no per-run history request.
    steady_images_per_s: float | None = None

    def metrics(self) -> dict[str, float]:
        out = {"train_time_s": self.train_s, "total_eval_time_s": self.eval_s, "first_epoch_time_s": self.first_epoch_s}
        if self.steady_epoch_s is not None:
            out["steady_epoch_time_s"] = self.steady_epoch_s
        if self.steady_images_per_s is not None:
            out["steady_images_per_s"] = self.steady_images_per_s
        if self.compile_s is not None:
            out |= {"total_compile_time_s": self.compile_s, "total_recompiles": self.recompiles or 0}
        return out

    def describe(self) -> str:
        first = f"first {self.first_epoch_s:.1f} s"
        if self.first_step_s is not None:
            first += f", of which {self.first_step_s:.2f} s its first step"
        steady = f"; then {self.steady_epoch_s:.1f} s per epoch (median)" if self.steady_epoch_s is not None else ""
        compiled = (f"; compiling {self.compile_s:.1f} s of it, {self.recompiles} recompile(s)"
                    if self.compile_s is not None else "")
        return (f"training {self.train_s:.1f} s over {self.epochs} epochs ({first}{steady}{compiled}), "
                f"evaluation {self.eval_s:.1f} s")


def timing_summary(history: list[dict[str, float]]) -> Timing:
    epoch_s = [h["epoch_time_s"] for h in history]
    compiled = [h for h in history if "compile_s" in h]
    rates = [h["images_per_s"] for h in history if "images_per_s" in h]
    steady_rates = rates[1:] if len(rates) > 1 else rates  # the rule of analysis.histories.mean_excluding_warmup
    return Timing(train_s=sum(epoch_s), eval_s=sum(h.get("eval_time_s", 0.0) for h in history), epochs=len(history),
                  first_epoch_s=epoch_s[0], steady_epoch_s=statistics.median(epoch_s[1:]) if len(epoch_s) > 1 else None,
                  first_step_s=history[0].get("first_step_s"),
                  compile_s=sum(h["compile_s"] for h in compiled) if compiled else None,
                  recompiles=int(sum(h.get("recompiles", 0) for h in compiled)) if compiled else None,
                  steady_images_per_s=statistics.fmean(steady_rates) if steady_rates else None)


def running_postfix(bar: Iterable) -> CheckHook | None:
    """Where the engine's periodic readings (loss, accuracy, images/s) go: the progress reporter's
    `on_check`, a bare tqdm bar's postfix, or nowhere."""
    on_check = getattr(bar, "on_check", None)
    if on_check is not None:
        return on_check
    show = getattr(bar, "set_postfix_str", None)
    if show is None:
        return None
    return lambda running: show(running.describe(), refresh=False)


class OutOfMemory(CifarSweepError, MemoryError):
    """The device ran out of memory for this batch size; the message names the key to lower."""


# The CPU allocator raises a plain RuntimeError, not torch.OutOfMemoryError: known by its message.
_CPU_OOM_MARKERS = ("DefaultCPUAllocator: can't allocate memory", "not enough memory")


def is_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or any(m in str(err) for m in _CPU_OOM_MARKERS)


def release_accelerator_memory(hw: Hardware) -> None:
    gc.collect()
    if hw.device.type == "cuda":
        torch.cuda.empty_cache()
