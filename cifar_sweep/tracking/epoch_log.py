"""What a run records after each epoch, as one object the training loop calls.

`EpochLog` is the loop's `on_epoch` for tracking: the epoch's metrics (never twice: an epoch the
store already holds, replayed from a checkpoint on resume, is skipped), a heartbeat the reaper reads,
the printed per-epoch lines, and the epoch's misclassified grid. Stopping early is another hook's
business (the sweep's pruner); `chain` runs them in order.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence

log = logging.getLogger("cifar_sweep")

# (epoch, metrics, evaluation) -> True to stop the run early.
EpochHook = Callable[[int, dict, object], bool]


def epoch_line(history: Sequence[dict], epoch: int, val_is_test: bool) -> dict:
    """The ResNet exercise's per-epoch JSON line: epoch, accuracy, seconds since the start."""
    key = "test_acc" if val_is_test else "val_acc"
    return {"epoch": epoch, key: round(history[epoch]["val_acc"], 4), "time": round(history[epoch]["elapsed_s"], 2)}


class EpochLog:
    """The tracker's side of every epoch; call `backfill` first when the run resumes."""

    def __init__(self, tracker, history: list[dict], val_images, classes: Sequence[str], val_is_test: bool,
                 grid_tiles: int | None):
        self.tracker, self.history = tracker, history
        self.val_images, self.classes, self.val_is_test = val_images, list(classes), val_is_test
        self.grid_tiles = grid_tiles  # None: no misclassified grids
        self.logged: set[int] = set()

    def backfill(self) -> None:
        """Log the epochs a resumed checkpoint holds that the store lacks (a kill between the two)."""
        self.logged = self.tracker.logged_steps("val_acc")
        for epoch, metrics in enumerate(self.history):
            if epoch not in self.logged:
                self.tracker.log_metrics(metrics, step=epoch)
                self.logged.add(epoch)

    def __call__(self, epoch: int, metrics: dict[str, float], result) -> bool:
        if epoch not in self.logged:
            self.tracker.log_metrics(metrics, step=epoch)
            self.logged.add(epoch)
        self.tracker.set_tags({"heartbeat": round(time.time(), 1)})
        print(json.dumps(epoch_line(self.history, epoch, self.val_is_test)), flush=True)
        log.info("epoch %d: train loss %.4f acc %.4f | val loss %.4f acc %.4f | %.1f s, %.0f img/s",
                 epoch, metrics["train_loss"], metrics["train_acc"], metrics["val_loss"], metrics["val_acc"],
                 metrics["epoch_time_s"], metrics["images_per_s"])
        if self.grid_tiles:
            log_misclassified_grid(self.tracker, self.val_images, result, self.classes, self.grid_tiles, epoch)
        return False

    def log_epochs_file(self) -> None:
        self.tracker.log_jsonl([epoch_line(self.history, e, self.val_is_test) for e in range(len(self.history))],
                               "epochs.jsonl")


def chain(*hooks: EpochHook | None) -> EpochHook:
    """One hook that runs each in order (all of them, every epoch) and stops if any asks to."""
    active = [h for h in hooks if h is not None]

    def run(epoch: int, metrics: dict, result) -> bool:
        stops = [hook(epoch, metrics, result) for hook in active]
        return any(stops)

    return run


def step_logger(tracker, every: int, epoch: int, steps_per_epoch: int):
    """Per-step loss every `every` steps (`train_loss_step`, step = global step); None when off."""
    if not every:
        return None

    def hook(step: int, loss) -> None:
        if step % every == 0:
            tracker.log_metrics({"train_loss_step": loss.item()}, step=epoch * steps_per_epoch + step)

    return hook


def log_misclassified_grid(tracker, images, result, classes, tiles: int, epoch: int) -> None:
    from cifar_sweep.analysis.figures import misclassified_grid

    grid = misclassified_grid(images, result.labels, result.probs, classes, tiles)
    if grid is not None:
        tracker.log_image(grid, f"misclassified/epoch_{epoch:03d}.png")
        tracker.log_image_step(grid, "misclassified", epoch)  # the run page's image view steps through these
