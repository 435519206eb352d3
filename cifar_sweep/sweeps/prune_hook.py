"""The sweep's early stop as an epoch hook: ask the pruner, and say on the run why it stopped."""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger("cifar_sweep")


@dataclass
class PruneHook:
    pruner: object  # sweeps.pruning.MedianPruner (or any object with should_stop(epoch, acc) and .median)
    tracker: object
    epochs: int
    pruned_at: int | None = None

    def __call__(self, epoch: int, metrics: dict, result) -> bool:
        if epoch + 1 >= self.epochs or not self.pruner.should_stop(epoch, result.acc):
            return False
        median = self.pruner.median
        log.info("pruned after epoch %d: val_acc %.4f is below the median %.4f of its sweep siblings",
                 epoch, result.acc, median)
        self.tracker.set_tags({"pruned": "true", "pruned_at_epoch": epoch, "pruned_median": round(median, 6)})
        self.pruned_at = epoch
        return True
