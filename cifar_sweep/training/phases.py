"""Where a run's seconds go, phase by phase (set-up, data, training, evaluation, diagnostics, logging).

A short sweep job can spend more on what surrounds training than on training; the `seconds/<phase>`
metrics make that visible on every run, so an overhead shows up as a number, not a suspicion.
Phases nest and count exclusively: the logging done inside the epochs is logging, not training.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class Phases:
    """Exclusive wall seconds per named phase; whatever no phase covered is `other`."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self._inner: list[float] = []  # per open phase: seconds its nested phases took

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        self._inner.append(0.0)
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            self.add(name, elapsed - self._inner.pop())
            if self._inner:
                self._inner[-1] += elapsed

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def move(self, source: str, target: str, seconds: float) -> None:
        """Re-attribute `seconds` measured inside `source` (e.g. the epochs' evaluations) to `target`."""
        seconds = min(seconds, self.seconds.get(source, 0.0))
        self.add(source, -seconds)
        self.add(target, seconds)

    def timed(self, name: str, hook: Callable | None) -> Callable | None:
        """`hook`, with its calls counted as phase `name`."""
        if hook is None:
            return None

        def run(*args, **kwargs):
            with self(name):
                return hook(*args, **kwargs)

        return run

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def metrics(self) -> dict[str, float]:
        total = self.elapsed()
        out = {f"seconds/{name}": round(max(s, 0.0), 3) for name, s in self.seconds.items()}
        out["seconds/other"] = round(max(total - sum(self.seconds.values()), 0.0), 3)
        out["seconds/total"] = round(total, 3)
        return out

    def describe(self) -> str:
        return ", ".join(f"{name} {s:.1f} s" for name, s in sorted(self.seconds.items(), key=lambda kv: -kv[1]))
