"""What a sweep reads and writes in MLflow: its parent run, its children, the skip rule's lookup and
the pruner's sibling values. The sweep machinery itself (`cifar_sweep.sweeps`) never imports mlflow.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mlflow.entities import Metric, RunStatus
from mlflow.tracking import MlflowClient

from cifar_sweep.tracking.run import ensure_experiment


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
                      threads: str) -> Previous | None:
    """The newest FINISHED run with this config hash, seed, device and requested thread count."""
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    query = " and ".join([
        f"tags.config_hash = '{_quoted(config_hash)}'", f"params.seed = '{_quoted(seed)}'",
        f"tags.device = '{_quoted(device)}'", f"params.`trainer.threads` = '{_quoted(threads)}'",
        "attributes.status = 'FINISHED'",
    ])
    runs = client.search_runs([found.experiment_id], query, max_results=1, order_by=["attributes.start_time DESC"])
    if not runs:
        return None
    best = runs[0].data.metrics.get("best_val_acc")
    return Previous(runs[0].info.run_id, float("nan") if best is None else float(best))


def sibling_val_acc(uri: str, run_id: str, sweep_id: str, epoch: int) -> list[float]:
    """val_acc at `epoch` of every other run of the sweep that has reached it."""
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.get_run(run_id).info.experiment_id
    siblings = client.search_runs([experiment_id], f"tags.sweep_id = '{_quoted(sweep_id)}'", max_results=1000)
    values = []
    for run in siblings:
        if run.info.run_id == run_id:
            continue
        at_epoch = [m.value for m in client.get_metric_history(run.info.run_id, "val_acc") if m.step == epoch]
        if at_epoch:
            values.append(at_epoch[-1])
    return values


def create_parent_run(uri: str, experiment: str, name: str, tags: Mapping[str, Any]) -> tuple[str, str]:
    """The sweep's parent run, created with the store and experiment before any job starts."""
    experiment_id = ensure_experiment(uri, experiment)
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(experiment_id, run_name=name[:250],
                            tags={k: str(v) for k, v in tags.items() if v is not None})
    return run.info.run_id, experiment_id


def children(uri: str, parent_run_id: str) -> list[Child]:
    """The parent's child runs; one whose process died with it RUNNING is ended KILLED here."""
    from cifar_sweep.tracking.reaping import end_run, left_end, mark_killed

    client = MlflowClient(tracking_uri=uri)
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
    client = MlflowClient(tracking_uri=uri)
    now = int(time.time() * 1000)
    try:
        client.log_batch(parent_run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
        client.set_tag(parent_run_id, "sweep_status", status)
        client.log_text(parent_run_id, summary + "\n", "sweep_summary.txt")
        client.log_dict(parent_run_id, records, "sweep_summary.json")
    finally:
        client.set_terminated(parent_run_id, RunStatus.to_string(getattr(RunStatus, status)))
