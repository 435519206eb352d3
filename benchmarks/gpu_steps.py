"""The GPU check's steps: each a child process with a time limit that holds while it runs.

A step runs in a process group of its own (a new session), so at its limit the whole group goes:
pytest and the runs it starts, a sweep's loky workers, a compile's worker pool. It gets SIGTERM
first (a training run ends its MLflow run KILLED), then SIGKILL a few seconds later; after a step
that ended by itself the group is cleared too, so nothing it left running slows the next step's
timings. Its output goes to a log file as it comes, and to this process's stdout when asked.
Standard library only: the check's own Python runs this before anything is installed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

GRACE_S = 5.0  # between SIGTERM and SIGKILL at a step's limit
_RUNNING: set[subprocess.Popen] = set()  # steps under way, for `stop_all`


@dataclass
class StepResult:
    name: str
    code: int | None  # the exit status; None when the step was stopped at its limit
    seconds: float
    limit_s: float
    timed_out: bool = False
    tail: list[str] = field(default_factory=list)  # its last lines of output

    @property
    def ok(self) -> bool:
        return self.code == 0 and not self.timed_out

    def record(self) -> dict:
        return asdict(self) | {"ok": self.ok}

    def describe(self) -> str:
        how = f"stopped at its {self.limit_s:.0f} s limit" if self.timed_out else f"exit {self.code}"
        return f"{self.name}: {'ok' if self.ok else 'FAILED'} ({how}, {self.seconds:.1f} s)"


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    """Whether a live process is left in the group (a zombie no parent has reaped yet does not count)."""
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: ask the kernel, zombies included
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # state, ppid, pgrp
            return True
    return False


def _clear_group(proc: subprocess.Popen) -> None:
    """End whatever is left of a step's group: its children outlive it when it is killed, and a
    pool's workers may linger after it exits."""
    if _group_alive(proc.pid):
        _kill_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + GRACE_S
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        _kill_group(proc.pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def run_step(name: str, argv: Sequence[str], limit_s: float, log: Path, *, env: Mapping[str, str] | None = None,
             cwd: str | os.PathLike | None = None, echo: bool = True, tail_lines: int = 40) -> StepResult:
    """Run `argv` for at most `limit_s` seconds, its output appended to `log` (and echoed)."""
    start = time.perf_counter()
    tail: list[str] = []
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as sink:
        sink.write(f"\n== {name} (limit {limit_s:.0f} s): {' '.join(argv)}\n")
        sink.flush()
        proc = subprocess.Popen(list(argv), cwd=cwd, env=dict(env) if env is not None else None,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                text=True, errors="replace", start_new_session=True)
        _RUNNING.add(proc)

        def pump() -> None:
            for line in proc.stdout:
                sink.write(line)
                sink.flush()
                tail.append(line.rstrip("\n"))
                del tail[:-tail_lines]
                if echo:
                    print(f"   {line.rstrip()}", flush=True)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        timed_out = False
        try:
            code: int | None = proc.wait(timeout=max(limit_s, 0.1))
        except subprocess.TimeoutExpired:
            timed_out, code = True, None
            _kill_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                pass
        finally:  # also when the check itself is stopped (Ctrl-C, SIGTERM): its step goes with it
            _clear_group(proc)
            _RUNNING.discard(proc)
        reader.join(timeout=GRACE_S)
        seconds = time.perf_counter() - start
        sink.write(f"== {name}: {'stopped at its limit' if timed_out else f'exit {code}'} after {seconds:.1f} s\n")
    return StepResult(name, code, round(seconds, 1), round(limit_s, 1), timed_out, list(tail))


def stop_all() -> None:
    """End every step still under way with its whole group (the check is being stopped)."""
    for proc in list(_RUNNING):
        _clear_group(proc)


class Budget:
    """The check's seconds: each step gets what it asks, or what is left (less a reserve for the summary)."""

    def __init__(self, seconds: float, reserve_s: float = 10.0, min_step_s: float = 15.0):
        self.total, self.reserve, self.min_step = seconds, reserve_s, min_step_s
        self.started = time.monotonic()

    def left(self) -> float:
        return self.total - (time.monotonic() - self.started)

    def spent(self) -> float:
        return time.monotonic() - self.started

    def allow(self, wanted: float, at_least: float | None = None) -> float | None:
        """Seconds this step may take, or None when less is left than it needs (`at_least`)."""
        left = self.left() - self.reserve
        return min(wanted, left) if left >= (self.min_step if at_least is None else at_least) else None
