"""One MLflow run during training: its lifecycle, params, metrics and files.

Everything goes through an explicit `MlflowClient` and run id rather than MLflow's fluent
`mlflow.start_run()` globals: a stray `MLFLOW_RUN_ID` in the environment, or a second run in the
same process (a sweep job), can then never attach metrics to the wrong run. Opening and creating
the store itself is `store`'s job; its names are re-exported here for the modules that import them
from the run.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from cifar_sweep.tracking import reaping
from cifar_sweep.tracking.store import (  # noqa: F401  (re-exported: imported from here elsewhere)
    StoreError,
    TrackingUnavailable,
    artifact_root_for,
    ensure_experiment,
    open_store,
    preflight,
)

log = logging.getLogger(__name__)

# MLflow caps param values (6000 characters in 3.x) and batch sizes; longer values go to an artifact.
MAX_PARAM_LENGTH = 6000
_BATCH = 100


def git_commit(folder: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


class RunTracker:
    """One MLflow run, from creation to its terminal status."""

    def __init__(self, client: MlflowClient, run_id: str):
        self.client, self.run_id = client, run_id
        self.ended = False

    @classmethod
    def start(
        cls, uri: str, experiment: str, run_name: str, tags: Mapping[str, Any], parent_run_id: str | None = None
    ) -> "RunTracker":
        preflight(uri)
        client = open_store(uri, must_exist=False)
        experiment_id = ensure_experiment(uri, experiment, client)
        all_tags = {k: str(v) for k, v in tags.items() if v is not None}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
        return cls(client, run.info.run_id)

    @classmethod
    def reopen(cls, uri: str, run_id: str) -> "RunTracker":
        """Continue an interrupted run (resume from a checkpoint): back to RUNNING, same id."""
        client = open_store(uri, must_exist=True)
        client.update_run(run_id, status="RUNNING")
        client.set_tag(run_id, "failure_reason", "")
        return cls(client, run_id)

    @staticmethod
    def status_of(uri: str, run_id: str) -> str | None:
        """The run's status, or None when it no longer exists (or was deleted)."""
        try:
            run = open_store(uri, must_exist=True).get_run(run_id)
        except (MlflowException, StoreError):
            return None
        return None if run.info.lifecycle_stage == "deleted" else run.info.status

    def logged_steps(self, key: str) -> set[int]:
        """The steps at which this run already has `key` (so a resumed epoch is never logged twice)."""
        return {m.step for m in self.client.get_metric_history(self.run_id, key)}

    # -- values ---------------------------------------------------------------------------------

    def log_params(self, params: Mapping[str, Any]) -> None:
        entries, too_long = [], {}
        for key, value in params.items():
            text = "None" if value is None else str(value)
            if len(text) > MAX_PARAM_LENGTH:
                too_long[key] = text
                text = f"(too long for a param: see params_too_long.json, {len(text)} characters)"
            entries.append(Param(key, text))
        for i in range(0, len(entries), _BATCH):
            self.client.log_batch(self.run_id, params=entries[i:i + _BATCH])
        if too_long:
            self.log_dict(too_long, "params_too_long.json")

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        entries = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        for i in range(0, len(entries), _BATCH):
            self.client.log_batch(self.run_id, metrics=entries[i:i + _BATCH])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        entries = [RunTag(k, str(v)) for k, v in tags.items() if v is not None]
        if entries:
            self.client.log_batch(self.run_id, tags=entries)

    # -- files ----------------------------------------------------------------------------------

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_dict(self, data: Any, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, data, artifact_file)

    def log_jsonl(self, rows: list[Mapping[str, Any]], artifact_file: str) -> None:
        self.log_text("".join(json.dumps(row) + "\n" for row in rows), artifact_file)

    def log_image(self, image, artifact_file: str) -> None:
        self.client.log_image(self.run_id, image, artifact_file=artifact_file)

    def log_figure(self, figure, artifact_file: str) -> None:
        self.client.log_figure(self.run_id, figure, artifact_file)

    def log_file(self, local_path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(local_path), artifact_path)

    def log_bytes(self, data: bytes, artifact_file: str) -> None:
        folder, name = os.path.split(artifact_file)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_bytes(data)
            self.log_file(path, folder or None)

    # -- lifecycle ------------------------------------------------------------------------------

    def finish(self) -> None:
        if not self.ended:
            self.client.set_terminated(self.run_id, "FINISHED")
            self.ended = True

    def fail(self, error: BaseException) -> None:
        """FAILED with the reason as a tag and the traceback as an artifact; never raises itself."""
        reason = str(error) or type(error).__name__
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        self._record_end(f"{type(error).__name__}: {reason}", text, "FAILED")

    def kill(self, reason: str) -> None:
        """KILLED with the reason; never raises itself (see `fail`)."""
        self._record_end(reason, None, "KILLED")

    def _record_end(self, reason: str, traceback_text: str | None, status: str) -> None:
        # Called while another error unwinds: raising here would bury that error under the
        # store's, so a status that cannot be written is logged and left for cifar-sweep-reap.
        if self.ended:
            return
        try:
            reaping.end_run(self.client, self.run_id, status, reason, traceback_text)
            self.ended = True
        except Exception as err:
            log.error("could not mark run %s %s (%s: %s); cifar-sweep-reap marks it later",
                      self.run_id, status, type(err).__name__, str(err).splitlines()[0] if str(err) else "")
