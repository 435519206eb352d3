"""A sweep job that runs in a process of its own stops when the process that launched it dies.

joblib's loky workers (`hydra/launcher=parallel`, `joblib`: children of the launching process) and
submitit's local jobs (`hydra/launcher=local`, `submitit_local`: children of a controller the
launcher starts) descend from the launching process. Killed hard (SIGKILL, the OOM killer), the
launcher cannot tell them anything: they would finish the job they hold into the store, then sit
idle, and a relaunch would find that run held by a live process. So each such job process watches
its ancestors: when the launcher is no longer among them (a process whose parent dies is given
another, even while the dead one is still a zombie), the run it trains ends KILLED with the reason,
as on SIGTERM, its last checkpoint intact, and the process exits; the relaunch resumes that run.

Why not `prctl(PR_SET_PDEATHSIG)`: the kernel sends that signal when the *thread* that forked the
child exits (loky forks its workers from a helper thread that may end while the launcher lives on),
and only for a direct child (a submitit job is a grandchild).

Jobs in the launching process itself (Hydra's basic launcher) die with it and need no watch; jobs
SLURM runs do not descend from it: they live on (and are requeued) without it, as SLURM intends.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

log = logging.getLogger("cifar_sweep")

THREAD_NAME = "cifar-sweep-launcher-watch"
POLL_S = 0.5
# How long the run gets to end itself (its KILLED status written, its lock released) once told.
STOP_GRACE_S = 60.0


def watch_launcher(launcher_pid: int | None, launcher_host: str | None, poll_s: float = POLL_S) -> bool:
    """Start watching the launching process from this job process, once per process (loky reuses
    its workers for several jobs); True when this process is watched, now or already."""
    if launcher_pid is None or launcher_host != socket.gethostname() or os.getpid() == launcher_pid:
        return False  # another host's launcher, or the job runs in the launcher itself
    if any(thread.name == THREAD_NAME for thread in threading.enumerate()):
        return True
    if not descends_from(launcher_pid, unsure=False):
        return False  # not started by it (SLURM on the launcher's own host)
    threading.Thread(target=_watch, args=(launcher_pid, poll_s), name=THREAD_NAME, daemon=True).start()
    return True


def descends_from(pid: int, unsure: bool) -> bool:
    """Whether `pid` is among this process's ancestors now; `unsure` when the chain could not be read
    (an ancestor exited while it was read)."""
    import psutil

    try:
        return any(parent.pid == pid for parent in psutil.Process().parents())
    except psutil.Error:
        return unsure


def _watch(launcher_pid: int, poll_s: float) -> None:
    while descends_from(launcher_pid, unsure=True):  # unsure: look again at the next poll
        time.sleep(poll_s)
    _stop(f"the sweep's launcher (process {launcher_pid} on {socket.gethostname()}) is gone; "
          "relaunch the sweep to resume this run from its last checkpoint")


def _stop(reason: str) -> None:
    """End the run this process trains KILLED with `reason`, then the process itself."""
    from cifar_sweep.tracking.lifecycle import run_in_body, stop_run

    log.error("stopping this job: %s", reason)
    if stop_run(reason):
        deadline = time.monotonic() + STOP_GRACE_S
        while run_in_body() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # the main thread releases the checkpoint folder's lock after the run's end
    logging.shutdown()  # the job's log file gets its last lines
    # No one is left to take this process's result, and a loky worker would wait for more jobs.
    os._exit(143)
