"""What torch.compile cost a run: how often it compiled and recompiled, and the seconds that took.

A recompile happens when a guard of a compiled frame fails: a new input shape (the epoch's last,
partial batch), a parameter whose `requires_grad` flips (airbench freezes its whitening bias after
a few epochs), a Python value the graph was specialised on. Each one stalls the epoch it falls in
for seconds, inside `epoch_time_s`; counting them per epoch shows which epoch's time is the
compiler's, and their reasons say what to fix. Read from torch._dynamo's own record of every
compile (`get_compilation_metrics`), so nothing here slows the steps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class CompileStats:
    compiles: int  # graphs compiled, forward and backward, first compiles included
    recompiles: int  # forward frames compiled again after a guard failed
    seconds: float  # wall time spent compiling (dynamo, AOT autograd, inductor), all of the above
    reasons: tuple[str, ...] = ()  # why each recompile happened, as dynamo words it

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """`compile_s` and `recompiles` (with `prefix`), for the run's metrics beside its timings."""
        return {f"{prefix}compile_s": round(self.seconds, 3), f"{prefix}recompiles": self.recompiles}


class CompileWatch:
    """Compiles since the watch started: `CompileWatch()` before an epoch, `.read()` after it."""

    def __init__(self) -> None:
        self.since = time.time()

    def read(self) -> CompileStats:
        return read(self.since)


def read(since: float = 0.0) -> CompileStats:
    """Every compile this process started at or after `since` (seconds since the epoch)."""
    try:
        from torch._dynamo.utils import get_compilation_metrics
    except ImportError:  # a torch without dynamo's record: nothing to report
        return CompileStats(0, 0, 0.0)
    compiles = recompiles = 0
    seconds = 0.0
    reasons = []
    for entry in get_compilation_metrics():
        start = getattr(entry, "start_time", None)
        if start is not None and start < since:
            continue
        compiles += 1
        duration_us = getattr(entry, "duration_us", None)
        if duration_us is not None:
            seconds += duration_us / 1e6
        else:
            seconds += getattr(entry, "entire_frame_compile_time_s", None) or 0.0
        reason = getattr(entry, "recompile_reason", None)
        if reason:
            recompiles += 1
            reasons.append(str(reason).splitlines()[0][:300])
    return CompileStats(compiles, recompiles, seconds, tuple(reasons))
