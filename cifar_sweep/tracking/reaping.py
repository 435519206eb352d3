"""Runs whose process died without ending them (SIGKILL, power loss), and ending a run KILLED.

A live process always ends its own run (FINISHED, FAILED or KILLED), so a RUNNING run is stale when
its recorded process is gone: on this host we check the pid (and that it is still a Python process,
against pid reuse); for runs of other hosts we go by the heartbeat the loop refreshes every epoch.
A sweep's parent run is no different: it records the launching process's pid and host, and that
process refreshes its heartbeat while the sweep runs (`sweep_runs.ParentHeartbeat`).
A process that could not write its run's end (the store's disk was full) left it in its checkpoint
folder's owner file: the run is then ended as that process meant to, with its reason.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import RunStatus, ViewType
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

# MLflow caps tag values at 8000 characters; a reason is read in one glance, the traceback is a file.
MAX_REASON = 5000


def end_run(client: MlflowClient, run_id: str, status: str, reason: str | None = None,
            traceback_text: str | None = None) -> None:
    """Record why a run ended (best effort), then its terminal status (which must not be skipped).

    The store may be what failed (disk full, locked): the reason is allowed to get lost, the
    status is still tried, and a status that cannot be written either is left for the reaper (the
    caller says so, once: the reason's own failure is then not worth a second message).
    """
    try:
        if reason:
            client.set_tag(run_id, "failure_reason", reason[:MAX_REASON])
        if traceback_text:
            client.log_text(run_id, traceback_text, "traceback.txt")
    except Exception as err:
        client.set_terminated(run_id, status)
        log.warning("could not record why run %s ended (%s: %s)", run_id, type(err).__name__, first_line(err))
        return
    client.set_terminated(run_id, status)


def first_line(err: BaseException) -> str:
    """The line of an error's message that says what went wrong (SQLAlchemy may open with a note)."""
    lines = [line for line in str(err).strip().splitlines() if not line.startswith("(raised as a result of")]
    return lines[0] if lines else ""


def mark_killed(client: MlflowClient, run_id: str, reason: str) -> None:
    """End a run KILLED with its reason: the one way any part of the project does it."""
    end_run(client, run_id, RunStatus.to_string(RunStatus.KILLED), reason)


@dataclass(frozen=True)
class Stale:
    run_id: str
    name: str
    reason: str
    status: str = "KILLED"  # FAILED when its process failed but could not write that
    parent: bool = False  # a sweep's parent run


def left_end(run) -> tuple[str, str] | None:
    """(status, reason) that a run's process left in its checkpoint folder, unable to write them."""
    from cifar_sweep.training.resume import read_owner

    folder = run.data.tags.get("checkpoint_dir")
    entry = read_owner(folder) if folder else None
    if not entry or entry.get("run_id") != run.info.run_id or entry.get("status") not in ("FAILED", "KILLED"):
        return None
    reason = entry.get("reason") or "no reason given"
    return entry["status"], f"{reason} (left by its process, which could not write it)"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():  # a recycled pid running something else is not our run
        return b"python" in cmdline.read_bytes()
    return True


def process_gone(run, stale_after_s: float, host: str | None = None) -> str | None:
    """Why a RUNNING run's process is gone ("process 123 on host-a is gone", "no heartbeat for 130
    min"), or None while it may still be alive."""
    host = host or socket.gethostname()
    tags = run.data.tags
    if tags.get("host") == host and tags.get("pid", "").isdigit():
        return None if pid_alive(int(tags["pid"])) else f"process {tags['pid']} on {host} is gone"
    age = time.time() - float(tags.get("heartbeat", run.info.start_time / 1000))
    return f"no heartbeat for {age / 60:.0f} min" if age > stale_after_s else None


def find_stale(client: MlflowClient, stale_after_s: float, host: str | None = None) -> list[Stale]:
    """Every RUNNING run, a sweep's parent included, whose process is gone."""
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)]
    if not experiments:
        return []
    found = []
    runs = client.search_runs(experiments, "attributes.status = 'RUNNING'", max_results=50000)
    for run in runs:
        why = process_gone(run, stale_after_s, host)
        if why is None:
            continue
        if run.data.tags.get("sweep_parent") == "true":
            found.append(Stale(run.info.run_id, run.info.run_name, f"sweep launcher: {why}", parent=True))
            continue
        left = left_end(run)
        found.append(Stale(run.info.run_id, run.info.run_name, left[1], left[0]) if left
                     else Stale(run.info.run_id, run.info.run_name, why))
    return found


def reap(client: MlflowClient, stale: Stale) -> None:
    """End a stale run as `find_stale` found it; a parent also says how its sweep ended, as a sweep
    that ends by itself does (`sweep_status`)."""
    if stale.parent:
        try:
            client.set_tag(stale.run_id, "sweep_status", stale.status)
        except Exception as err:  # the status below still matters more than this tag
            log.warning("could not tag sweep parent %s (%s: %s)", stale.run_id, type(err).__name__, first_line(err))
    end_run(client, stale.run_id, stale.status, f"reaped: {stale.reason}")
