"""A run's end status from how its body ended: FINISHED, FAILED with the reason, KILLED on Ctrl-C or
SIGTERM (SIGTERM is turned into an exception so the run unwinds like on Ctrl-C).

Another thread of the process can end the run the same way, with its own reason (`stop_run`): a
sweep job whose launcher died stops like this, its run KILLED and its checkpoint intact.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from contextlib import contextmanager

log = logging.getLogger("cifar_sweep")

SIGTERM_REASON = "terminated (SIGTERM)"
# A stop asked by another thread waits until the main thread is out of these (`_OnSigterm`).
_STORE_MODULES = ("mlflow", "sqlalchemy", "sqlite3", "alembic")
# How often `stop_run` signals while the main thread is inside a store call, and for how long.
RESIGNAL_S = 0.05
RESIGNAL_FOR_S = 30.0


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so the run unwinds (and is marked KILLED) like on Ctrl-C."""

    def __init__(self, reason: str = SIGTERM_REASON) -> None:
        super().__init__(reason)
        self.reason = reason


class _OnSigterm:
    """The SIGTERM handler while a run's body runs. Being an object, it marks that a body runs (any
    thread can ask `signal.getsignal`) and carries the reason another thread stops the run for."""

    def __init__(self) -> None:
        self.reason = SIGTERM_REASON
        self.requested = False  # by `stop_run`, which signals again until the run unwinds
        self.raised = False

    def __call__(self, signum, frame):
        if self.raised:
            return  # the run is ending already: let it write its end
        if self.requested and _in_store_call(frame):
            # Unwinding from inside a database call would leave its transaction open, and the store
            # locked against the run's own KILLED status; `stop_run` signals again in a moment.
            return
        self.raised = True
        raise Terminated(self.reason)


def _in_store_call(frame) -> bool:
    while frame is not None:
        if str(frame.f_globals.get("__name__", "")).startswith(_STORE_MODULES):
            return True
        frame = frame.f_back
    return False


def run_in_body() -> bool:
    """True while this process is inside a run's `run_lifecycle` (from any thread)."""
    return isinstance(signal.getsignal(signal.SIGTERM), _OnSigterm)


def stop_run(reason: str) -> bool:
    """From any thread: end the run this process trains KILLED with `reason`, as SIGTERM would, at
    the first moment the main thread is not inside a store call. False when no run's body runs."""
    handler = signal.getsignal(signal.SIGTERM)
    if not isinstance(handler, _OnSigterm):
        return False
    handler.reason, handler.requested = reason, True
    deadline = time.monotonic() + RESIGNAL_FOR_S
    while not handler.raised and signal.getsignal(signal.SIGTERM) is handler:
        if time.monotonic() > deadline:
            handler.requested = False  # a store call that never returns: unwind from it anyway
        # A real signal, not `_thread.interrupt_main`: it also wakes a main thread blocked in a system call.
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(RESIGNAL_S)
    return True


@contextmanager
def run_lifecycle(tracker, store_path=None):
    """End the run with the status that matches how the body ended, then let the error propagate."""
    on_term = _OnSigterm()
    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    except KeyboardInterrupt:
        tracker.kill("interrupted (SIGINT)")
        log.error("interrupted: run the same command again to resume from the last epoch")
        # An explicit 130 (128 + SIGINT), as shells report it; a bare KeyboardInterrupt would make
        # Python kill itself with SIGINT, which callers see as -2.
        raise SystemExit(130) from None
    except Terminated as stop:
        tracker.kill(stop.reason)
        if stop.reason != SIGTERM_REASON:
            log.error("stopped: %s", stop.reason)
        raise SystemExit(143) from None
    except SystemExit as exit_:
        # Someone else ends the process mid-run, e.g. submitit on preemption or timeout before it
        # requeues the job: KILLED, not FAILED; the requeued job resumes from the checkpoint.
        # SLURM's SIGTERM to the requeued job's steps follows at once: it must not cut this short.
        on_term.raised = True
        tracker.kill(f"process exiting (SystemExit {exit_.code}): preempted or requeued")
        raise
    except BaseException as err:
        from cifar_sweep.training.checkpoint import disk_full

        full = disk_full(err, store_path)
        if full is None:
            tracker.fail(err)
            raise
        # A full disk fails every write from now on, the log file's too: one message, not a
        # traceback for each log record that cannot reach the file.
        logging.raiseExceptions = False
        tracker.fail(full)
        raise full from err
    else:
        tracker.finish()
    finally:
        signal.signal(signal.SIGTERM, previous)
