"""The only place that talks to MLflow during training: store, run lifecycle, params, metrics, files.

Everything goes through an explicit `MlflowClient` and run id rather than MLflow's fluent
`mlflow.start_run()` globals: a stray `MLFLOW_RUN_ID` in the environment, or a second run in the
same process (a sweep job), can then never attach metrics to the wrong run.
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

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

# MLflow caps param values (6000 characters in 3.x) and batch sizes; longer values go to an artifact.
MAX_PARAM_LENGTH = 6000
_BATCH = 100


def artifact_root_for(uri: str) -> str | None:
    """Artifacts of a SQLite store live beside the database, under runs/artifacts.

    MLflow's own default for a database store is `./mlartifacts` relative to the *current*
    directory, which scatters a sweep's files across Hydra's job folders. A server keeps its own
    artifact root, so we leave it alone.
    """
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "artifacts").resolve().as_uri()
    return None


class TrackingUnavailable(RuntimeError):
    """The store cannot be reached or written: raised at start-up, before any training."""


def preflight(uri: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds with a clear message when the store is unusable.

    MLflow's own client retries an unreachable server for minutes with backoff; a job should not
    train for an hour and then lose its results, nor hang before saying why.
    """
    if uri.startswith(("http://", "https://")):
        import requests

        try:
            reply = requests.get(uri.rstrip("/") + "/health", timeout=timeout_s)
        except requests.RequestException as err:
            raise TrackingUnavailable(
                f"tracking server {uri} is unreachable ({type(err).__name__}). Start it (scripts/tracking_server.sh) "
                "or point tracking.uri at a reachable server or at sqlite:///<path>/mlflow.db"
            ) from err
        if reply.status_code != 200:
            raise TrackingUnavailable(f"tracking server {uri} answered /health with HTTP {reply.status_code}")
    elif uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise TrackingUnavailable(f"cannot create the folder of the tracking store {db}: {err}") from err
        target = db if db.exists() else db.parent
        if not os.access(target, os.W_OK):
            raise TrackingUnavailable(f"the tracking store {db} is read-only; make it writable or set tracking.uri")


def ensure_experiment(uri: str, name: str) -> str:
    """Create the store (migrations on first use) and the experiment if needed; return its id.

    Safe when several processes race: the loser of a concurrent create reads the winner's id.
    """
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage != "active":
            raise ValueError(
                f"tracking.experiment={name!r} is deleted in {uri}; restore it in the MLflow UI or choose another name"
            )
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_root_for(uri))
    except MlflowException:
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


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
        try:
            experiment_id = ensure_experiment(uri, experiment)
        except MlflowException as err:
            raise TrackingUnavailable(f"the tracking store {uri} cannot be used: {str(err)[:300]}") from err
        client = MlflowClient(tracking_uri=uri)
        all_tags = {k: str(v) for k, v in tags.items() if v is not None}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
        return cls(client, run.info.run_id)

    @classmethod
    def reopen(cls, uri: str, run_id: str) -> "RunTracker":
        """Continue an interrupted run (resume from a checkpoint): back to RUNNING, same id."""
        client = MlflowClient(tracking_uri=uri)
        client.update_run(run_id, status="RUNNING")
        client.set_tag(run_id, "failure_reason", "")
        return cls(client, run_id)

    @staticmethod
    def status_of(uri: str, run_id: str) -> str | None:
        """The run's status, or None when it no longer exists (or was deleted)."""
        try:
            run = MlflowClient(tracking_uri=uri).get_run(run_id)
        except MlflowException:
            return None
        return None if run.info.lifecycle_stage == "deleted" else run.info.status

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
        self._end(RunStatus.FINISHED)

    def fail(self, error: BaseException) -> None:
        """FAILED with the reason as a tag and the traceback as an artifact; never raises itself."""
        reason = str(error) or type(error).__name__
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        self._record_end(f"{type(error).__name__}: {reason}", text, RunStatus.FAILED)

    def kill(self, reason: str) -> None:
        self._record_end(reason, None, RunStatus.KILLED)

    def _record_end(self, reason: str, traceback_text: str | None, status: int) -> None:
        try:
            self.set_tags({"failure_reason": reason[:5000]})
            if traceback_text:
                self.log_text(traceback_text, "traceback.txt")
        except Exception:  # the store itself may be what failed; still try to set the status
            log.exception("could not record the failure reason of run %s", self.run_id)
        self._end(status)

    def _end(self, status: int) -> None:
        if self.ended:
            return
        self.client.set_terminated(self.run_id, RunStatus.to_string(status))
        self.ended = True
