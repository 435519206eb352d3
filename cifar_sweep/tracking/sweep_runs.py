"""What a sweep reads and writes in MLflow: its parent run, its children, the skip rule's lookup and
the pruner's sibling values. The sweep machinery itself (`cifar_sweep.sweeps`) never imports mlflow.
Every store is opened through `store.open_store`, so its lock and checks hold here too.

A parent run is reapable like a job's run: it carries the launching process's pid and host, and a
heartbeat that process refreshes while the sweep runs. A relaunch of the same sweep (same
experiment, sweeper and overrides: the `sweep_key` tag) ends the parent of an earlier launch whose
process is gone KILLED, naming the new parent, rather than leaving it RUNNING beside it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mlflow.entities import Metric, RunStatus

from cifar_sweep.tracking.queries import load_histories
from cifar_sweep.tracking.store import ensure_experiment, open_store

log = logging.getLogger("cifar_sweep")

# A parent's heartbeat: often enough that a launch on another host is told dead within minutes,
# rarely enough to cost the store nothing (one tag write a minute).
HEARTBEAT_S = 60.0
# A parent of another host, or one whose pid cannot be checked here, is dead after this long
# without a heartbeat: many missed beats, not one slow write.
PARENT_STALE_AFTER_S = 15 * 60.0
# A job run of another host: the reaper's default (a job beats once an epoch, and epochs can be long).
JOB_STALE_AFTER_S = 120 * 60.0


@dataclass(frozen=True)
class Previous:
    run_id: str
    best_val_acc: float


@dataclass(frozen=True)
class Child:
    run_id: str
    status: str
    job_num: int | None
    best_val_acc: float | None
    failure_reason: str | None


def _quoted(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def find_finished_run(uri: str, experiment: str, config_hash: str, seed: str, device: str,
                      threads: str, compile: str | None = None, precision: str | None = None,
                      rerun_pruned: bool = False) -> Previous | None:
    """The newest FINISHED run with this config hash, seed, device and requested thread count
    (`rerun_pruned`: one a sweep's pruner stopped early does not count).

    The store is created when missing (under its lock): the job asking is about to write to it.
    """
    client = open_store(uri, create=True)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    query = " and ".join([
        f"tags.config_hash = '{_quoted(config_hash)}'", f"params.seed = '{_quoted(seed)}'",
        f"tags.device = '{_quoted(device)}'", f"params.`trainer.threads` = '{_quoted(threads)}'",
        "attributes.status = 'FINISHED'",
        # Compiled or eager, and the precision it computed in: a run of another setup is not this job.
        *([f"params.`trainer.compile` = '{_quoted(compile)}'"] if compile is not None else []),
        *([f"tags.precision = '{_quoted(precision)}'"] if precision is not None else []),
    ])
    runs = client.search_runs([found.experiment_id], query, max_results=100 if rerun_pruned else 1,
                              order_by=["attributes.start_time DESC"])
    if rerun_pruned:  # a tag filter cannot ask for runs *without* a tag: the few candidates are read here
        runs = [r for r in runs if r.data.tags.get("pruned") != "true"][:1]
    if not runs:
        return None
    best = runs[0].data.metrics.get("best_val_acc")
    return Previous(runs[0].info.run_id, float("nan") if best is None else float(best))


class SweepSiblings:
    """The other runs of one run's sweep, as the pruner reads them at every epoch.

    The store is opened once per run; each check is the sweep's run list and one bulk read of their
    val_acc histories (the leaderboard's), not a history read per sibling.
    """

    # More runs than any sweep here launches; the search pages no further.
    MAX_SIBLINGS = 1000

    def __init__(self, uri: str, run_id: str, sweep_id: str) -> None:
        self.run_id = run_id
        self._client = open_store(uri)
        self._experiment_id = self._client.get_run(run_id).info.experiment_id
        self._filter = f"tags.sweep_id = '{_quoted(sweep_id)}'"

    def val_acc_at(self, epoch: int) -> list[float]:
        """val_acc at `epoch` of every other run of the sweep that has reached it (its last value there)."""
        runs = self._client.search_runs([self._experiment_id], self._filter, max_results=self.MAX_SIBLINGS)
        others = [r.info.run_id for r in runs if r.info.run_id != self.run_id]
        histories = load_histories(self._client, others, ["val_acc"])
        return histories.loc[histories["step"] == epoch, "value"].astype(float).tolist()


@dataclass(frozen=True)
class Parent:
    run_id: str
    experiment_id: str
    ended: tuple[str, ...]  # parents of earlier launches of this sweep, found dead and ended KILLED


def create_parent_run(uri: str, experiment: str, name: str, tags: Mapping[str, Any]) -> Parent:
    """The sweep's parent run, created with the store and experiment before any job starts; the
    dead parents of earlier launches of the same sweep (`tags["sweep_key"]`) are then ended KILLED,
    naming it."""
    client = open_store(uri, create=True)
    experiment_id = ensure_experiment(uri, experiment, client)
    tags = {**tags, "heartbeat": round(time.time(), 1)}
    run = client.create_run(experiment_id, run_name=name[:250],
                            tags={k: str(v) for k, v in tags.items() if v is not None})
    ended = end_dead_launches(client, experiment_id, str(tags.get("sweep_key") or ""), run.info.run_id)
    if ended:
        client.set_tag(run.info.run_id, "relaunch_of", ",".join(ended))
    return Parent(run.info.run_id, experiment_id, tuple(ended))


def end_dead_launches(client, experiment_id: str, sweep_key: str, new_parent_id: str) -> list[str]:
    """End KILLED every RUNNING parent of this sweep whose launching process is gone, and its RUNNING
    children whose processes are gone too (the relaunch resumes them from their checkpoints)."""
    from cifar_sweep.tracking.reaping import end_run, left_end, mark_killed, process_gone

    if not sweep_key:
        return []
    query = (f"tags.sweep_key = '{_quoted(sweep_key)}' and tags.sweep_parent = 'true' "
             "and attributes.status = 'RUNNING'")
    ended = []
    for parent in client.search_runs([experiment_id], query, max_results=1000):
        if parent.info.run_id == new_parent_id:
            continue
        why = process_gone(parent, PARENT_STALE_AFTER_S)
        if why is None:  # another launch of the same sweep, alive: it ends its own parent
            continue
        reason = f"sweep launcher: {why}; relaunched as sweep parent {new_parent_id}"
        children = client.search_runs(
            [experiment_id], f"tags.`mlflow.parentRunId` = '{_quoted(parent.info.run_id)}' "
            "and attributes.status = 'RUNNING'", max_results=10000)
        for child in children:
            gone = process_gone(child, JOB_STALE_AFTER_S)
            if gone is None:
                continue
            left = left_end(child)
            if left is not None:
                end_run(client, child.info.run_id, *left)
            else:
                mark_killed(client, child.info.run_id, f"{gone} (with the sweep's launcher)")
        client.set_tag(parent.info.run_id, "sweep_status", "KILLED")
        mark_killed(client, parent.info.run_id, reason)
        log.warning("ended the parent run %s of an earlier launch of this sweep KILLED: %s", parent.info.run_id, reason)
        ended.append(parent.info.run_id)
    return ended


class ParentHeartbeat:
    """Refreshes a parent run's `heartbeat` tag from a daemon thread while the launching process
    lives, as a job's epochs do for its run: the reaper and a relaunch on another host tell a dead
    launch from a live one by it. A failed write is only logged: the sweep matters more."""

    def __init__(self, uri: str, run_id: str, interval_s: float = HEARTBEAT_S) -> None:
        self.uri, self.run_id, self.interval_s = uri, run_id, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="cifar-sweep-parent-heartbeat", daemon=True)

    def start(self) -> "ParentHeartbeat":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _beat(self) -> None:
        client = None
        while not self._stop.wait(self.interval_s):
            try:
                client = client or open_store(self.uri)
                client.set_tag(self.run_id, "heartbeat", str(round(time.time(), 1)))
            except Exception as err:  # noqa: BLE001  a busy store: the next beat tries again
                log.debug("sweep parent heartbeat not written (%s: %s)", type(err).__name__, err)


def children(uri: str, parent_run_id: str) -> list[Child]:
    """The parent's child runs; one whose process died with it RUNNING is ended KILLED here."""
    from cifar_sweep.tracking.reaping import end_run, left_end, mark_killed

    client = open_store(uri)
    runs = client.search_runs([client.get_run(parent_run_id).info.experiment_id],
                              f"tags.`mlflow.parentRunId` = '{_quoted(parent_run_id)}'", max_results=10000)
    found = []
    for run in runs:
        status, reason = run.info.status, run.data.tags.get("failure_reason")
        if status == "RUNNING":  # the launcher has returned, so its job's process is gone
            left = left_end(run)
            if left is not None:  # its process failed (a full disk) and could not write that
                status, reason = left
                end_run(client, run.info.run_id, status, reason)
            else:
                reason = "the job's process ended without closing its run"
                mark_killed(client, run.info.run_id, reason)
                status = "KILLED"
        num = run.data.tags.get("job_num")
        found.append(Child(run.info.run_id, status, int(num) if num not in (None, "") else None,
                           run.data.metrics.get("best_val_acc"), reason))
    return found


def end_parent_run(uri: str, parent_run_id: str, status: str, metrics: Mapping[str, float],
                   summary: str, records: list[dict]) -> None:
    """The parent's own summary metrics (names no job uses), its summary files, then its status."""
    client = open_store(uri)
    now = int(time.time() * 1000)
    try:
        client.log_batch(parent_run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
        client.set_tag(parent_run_id, "sweep_status", status)
        client.log_text(parent_run_id, summary + "\n", "sweep_summary.txt")
        client.log_dict(parent_run_id, records, "sweep_summary.json")
    finally:
        client.set_terminated(parent_run_id, RunStatus.to_string(getattr(RunStatus, status)))
