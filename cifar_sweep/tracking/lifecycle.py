"""A run's end status from how its body ended: FINISHED, FAILED with the reason, KILLED on Ctrl-C or
SIGTERM (SIGTERM is turned into an exception so the run unwinds like on Ctrl-C)."""

from __future__ import annotations

import logging
import signal
from contextlib import contextmanager

log = logging.getLogger("cifar_sweep")


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so the run unwinds (and is marked KILLED) like on Ctrl-C."""


def _raise_terminated(signum, frame):
    raise Terminated()


@contextmanager
def run_lifecycle(tracker, store_path=None):
    """End the run with the status that matches how the body ended, then let the error propagate."""
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    except KeyboardInterrupt:
        tracker.kill("interrupted (SIGINT)")
        log.error("interrupted: run the same command again to resume from the last epoch")
        # An explicit 130 (128 + SIGINT), as shells report it; a bare KeyboardInterrupt would make
        # Python kill itself with SIGINT, which callers see as -2.
        raise SystemExit(130) from None
    except Terminated:
        tracker.kill("terminated (SIGTERM)")
        raise SystemExit(143) from None
    except SystemExit as exit_:
        # Someone else ends the process mid-run, e.g. submitit on preemption or timeout before it
        # requeues the job: KILLED, not FAILED; the requeued job resumes from the checkpoint.
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
