"""Progress within an epoch, so a run is never silent for long.

On a terminal a tqdm bar shows batches done, the running loss, accuracy and images/s, and the time
left. In a log (a file, a pipe, a cluster job) a bar is a stream of carriage returns, so a plain line
is written instead, every `every_s` seconds. The numbers come from the engine's periodic host reads
(`Running`), so progress adds no synchronisation of its own.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from collections.abc import Iterable, Sized

from cifar_sweep.training.engine import Running

log = logging.getLogger("cifar_sweep")

LOG_EVERY_S = 20.0


class EpochProgress:
    """Iterate the epoch's batches while reporting how far it got (`on_check` takes the readings)."""

    def __init__(self, batches: Iterable, epoch: int, show: bool | str = "auto", every_s: float = LOG_EVERY_S):
        self.batches, self.epoch, self.every_s = batches, epoch, every_s
        self.total = len(batches) if isinstance(batches, Sized) else None
        if show == "auto":
            show = "bar" if sys.stderr.isatty() else "log"
        elif show is True:
            show = "bar"
        self.mode = show or None  # "bar", "log" or None (quiet)
        self._bar = None
        self._last_line = time.perf_counter()

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        if self.mode != "bar":
            yield from self.batches
            return
        from tqdm import tqdm

        # The size said, not measured by tqdm: a pseudo-terminal that reports no size (0 x 0, as
        # terminals opened by programs often do) makes tqdm draw nothing at all.
        size = shutil.get_terminal_size((100, 24))
        self._bar = tqdm(self.batches, total=self.total, desc=f"epoch {self.epoch}", unit="batch", leave=False,
                         ncols=size.columns, nrows=size.lines, file=sys.stderr)
        try:
            yield from self._bar
        finally:
            self._bar.close()

    def on_check(self, running: Running) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(running.describe(), refresh=False)
        elif self.mode == "log" and time.perf_counter() - self._last_line >= self.every_s:
            self._last_line = time.perf_counter()
            log.info("epoch %d: %s", self.epoch, self.describe(running))

    def describe(self, running: Running) -> str:
        done = f"{running.steps}"
        left = ""
        if self.total:
            done += f"/{self.total} batches ({running.steps / self.total:.0%})"
            if running.steps:
                left = f", about {running.seconds / running.steps * (self.total - running.steps):.0f} s left"
        return f"{done}, {running.describe()}{left}"
