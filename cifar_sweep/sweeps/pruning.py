"""Median pruning across a sweep's jobs, read back from the store so it works with any launcher."""

from __future__ import annotations

import statistics


class MedianPruner:
    """Stop a run whose val_acc at epoch k is below the median of its sweep siblings at epoch k.

    Checked at every epoch from `after_epoch` on (0-based), once at least `min_siblings` siblings
    have reached that epoch. The run then ends FINISHED, tagged `pruned`.
    """

    def __init__(self, tracking_uri: str, run_id: str, sweep_id: str, after_epoch: int, min_siblings: int):
        self.tracking_uri, self.run_id, self.sweep_id = tracking_uri, run_id, sweep_id
        self.after_epoch, self.min_siblings = int(after_epoch), max(1, int(min_siblings))
        self.median: float | None = None
        self.reason = ""  # why it stopped the run, once it has
        self._siblings = None  # the store's view of the sweep, opened at the first check

    def sibling_values(self, epoch: int) -> list[float]:
        if self._siblings is None:
            from cifar_sweep.tracking.sweep_runs import SweepSiblings

            self._siblings = SweepSiblings(self.tracking_uri, self.run_id, self.sweep_id)
        return self._siblings.val_acc_at(epoch)

    def should_stop(self, epoch: int, val_acc: float) -> bool:
        if epoch < self.after_epoch:
            return False
        values = self.sibling_values(epoch)
        if len(values) < self.min_siblings:
            return False
        self.median = statistics.median(values)
        if val_acc >= self.median:
            return False
        self.reason = (f"val_acc {val_acc:.4f} after epoch {epoch} is below the median {self.median:.4f} of its "
                       "sweep siblings")
        return True

    def finished(self, epoch: int, val_acc: float) -> None:
        """The run's last epoch: nothing to record, its siblings read its history from the store."""

    @property
    def tags(self) -> dict:
        return {"pruned_by": "median", "pruned_median": round(self.median, 6)}
