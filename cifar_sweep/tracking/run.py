"""One MLflow run during training: its lifecycle, params, metrics and files.

Everything goes through an explicit `MlflowClient` and run id rather than MLflow's fluent
`mlflow.start_run()` globals: a stray `MLFLOW_RUN_ID` in the environment, or a second run in the
same process (a sweep job), can then never attach metrics to the wrong run. Opening and creating
the store itself is `store`'s job; its names are re-exported here for the modules that import them
from the run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import tempfile
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from cifar_sweep.tracking import reaping
from cifar_sweep.tracking.store import StoreError, ensure_experiment, open_store

log = logging.getLogger(__name__)

# MLflow caps param values (6000 characters in 3.x) and batch sizes; longer values go to an artifact.
MAX_PARAM_LENGTH = 6000
_BATCH = 100
# The dataset digest column holds 36 characters; 16 hex digits (64 bits) tell copies apart.
DIGEST_CHARS = 16
# What the dataset input is to MLflow's UI (the tag its Datasets column shows beside the name).
DATASET_CONTEXT = "training"


def _image_hashes(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N, 2) uint64: two multiply-add hashes of each image's pixels, the first mixed with its label."""
    odd = np.random.default_rng(0x5EED).integers(0, 2**63, (2, 384), dtype=np.uint64)
    multipliers = odd * np.uint64(2) + np.uint64(1)  # odd multipliers: every pixel word counts
    images = np.ascontiguousarray(images, dtype=np.uint8)
    words = images.reshape(len(images), -1).view(np.uint64)
    if words.shape[1] != multipliers.shape[1]:
        raise ValueError(f"dataset_digest wants (N, 3, 32, 32) uint8 images, got {images.shape}")
    hashes = np.empty((len(images), 2), dtype=np.uint64)
    for start in range(0, len(images), 4096):  # bounds the (chunk, 384) product's memory
        part = words[start:start + 4096]
        for k in range(2):
            hashes[start:start + 4096, k] = (part * multipliers[k]).sum(axis=1, dtype=np.uint64)
    hashes[:, 0] ^= np.asarray(labels, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    return hashes


def dataset_digest(*pools: Sequence[tuple[np.ndarray, np.ndarray]]) -> str:
    """A digest of the images and labels themselves, whatever order they come in.

    Each pool is a list of (uint8 images (N, 3, 32, 32), labels) pairs whose images count as one
    set: give the training pool as [train, val] and the test split as [test]. Every image gets two
    64-bit multiply-add hashes of its pixels, mixed with its label; each pool's sorted hashes go
    through SHA-256. So the shuffled order, the seed's split and how many training images are held
    out for validation leave the digest alone, while any changed pixel or label changes it. About
    0.3 s for the 60,000 images of CIFAR-10 on 2 cores; a cryptographic hash per image takes 3x that.
    """
    total = hashlib.sha256()
    for pool in pools:
        hashes = np.concatenate([_image_hashes(x, y) for x, y in pool]) if pool else np.empty((0, 2), np.uint64)
        ordered = hashes[np.lexsort((hashes[:, 1], hashes[:, 0]))]
        total.update(len(ordered).to_bytes(8, "little"))
        total.update(ordered.tobytes())
    return total.hexdigest()[:DIGEST_CHARS]


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

    def __init__(self, client: MlflowClient, run_id: str, uri: str | None = None):
        self.client, self.run_id = client, run_id
        self.uri = uri or client.tracking_uri
        self.ended = False
        self._monitor = None  # MLflow's system-metrics thread, once started
        self._async_images = False  # image uploads in flight that end() must wait for
        # Told (status, reason) when the store cannot take the run's end, to leave it for the reaper.
        self.on_unrecorded_end = None

    @classmethod
    def start(
        cls, uri: str, experiment: str, run_name: str, tags: Mapping[str, Any], parent_run_id: str | None = None
    ) -> "RunTracker":
        client = open_store(uri, create=True)  # refuses a server that is down or a read-only store first
        experiment_id = ensure_experiment(uri, experiment, client)
        all_tags = {k: str(v) for k, v in tags.items() if v is not None}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
        return cls(client, run.info.run_id, uri)

    @classmethod
    def reopen(cls, uri: str, run_id: str) -> "RunTracker":
        """Continue an interrupted run (resume from a checkpoint): back to RUNNING, same id."""
        client = open_store(uri)
        client.update_run(run_id, status="RUNNING")
        client.set_tag(run_id, "failure_reason", "")
        return cls(client, run_id, uri)

    @staticmethod
    def status_of(uri: str, run_id: str) -> str | None:
        """The run's status, or None when it no longer exists (or was deleted)."""
        try:
            run = open_store(uri).get_run(run_id)
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

    def log_image_step(self, image, key: str, step: int) -> None:
        """An image of a series (`key`) at `step`: the run page's image view steps through them.

        Written at once, not through MLflow's asynchronous queue: once that queue has run, ending the
        run joins its thread, which polls in 1-second waits, so every run paid up to a second at its
        end (the whole training time of a short sweep job) to save a few tens of milliseconds per epoch.
        """
        self.client.log_image(self.run_id, image, key=key, step=step, synchronous=True)

    def flush(self) -> None:
        """Wait for the asynchronous uploads (images, the tag that announces them) to land."""
        if not self._async_images:
            return
        tracking = self.client._tracking_client  # MLflow keeps one artifact repo per run, and its queue
        tracking._get_artifact_repo(self.run_id).flush_async_logging()
        tracking.store.flush_async_logging()
        self._async_images = False

    # -- inputs and the machine -----------------------------------------------------------------

    def log_dataset(self, name: str, digest: str, source: str | None, profile: Mapping[str, Any]) -> None:
        """The data as the run's MLflow dataset input: the runs table's Datasets column shows it.

        `source`: the file or folder the data came from (None for generated data); `profile`: the
        split sizes and classes, shown in the UI's dataset panel.
        """
        from mlflow.data.code_dataset_source import CodeDatasetSource
        from mlflow.data.dataset_source_registry import get_dataset_source_from_json
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.types.schema import Schema, TensorSpec

        # A local file, said so: MLflow registers its local-file source twice (for `file:` URIs and for
        # bare paths), so guessing the kind from the URI warns on every run that it is ambiguous.
        origin = (get_dataset_source_from_json(json.dumps({"uri": Path(source).resolve().as_uri()}), "local")
                  if source else CodeDatasetSource({"mlflow.source.name": "cifar_sweep.data"}))
        schema = Schema([TensorSpec(np.dtype(np.uint8), (-1, 3, 32, 32), "image"),
                         TensorSpec(np.dtype(np.int64), (-1,), "label")])
        meta = MetaDataset(origin, name=name, digest=digest, schema=schema)._to_mlflow_entity()
        entity = Dataset(name=meta.name, digest=meta.digest, source_type=meta.source_type, source=meta.source,
                         schema=meta.schema, profile=json.dumps(dict(profile)))
        self.client.log_inputs(self.run_id, [DatasetInput(entity, [InputTag("mlflow.data.context", DATASET_CONTEXT)])])

    def start_system_metrics(self, interval_s: float, resumed: bool = False) -> None:
        """MLflow's system metrics (`system/cpu_utilization_percentage`, memory, disk, network, and
        `system/gpu_<i>_*` where NVIDIA's NVML answers) every `interval_s` seconds, from a thread.

        A resumed run continues the series after its last step. Stopped by finish/fail/kill.
        """
        import importlib.util

        if importlib.util.find_spec("psutil") is None:  # MLflow's CPU and memory monitor needs it
            log.warning("no system metrics for run %s: pip install psutil (and nvidia-ml-py for GPUs)", self.run_id)
            return  # a missing extra costs the machine's figures, never the run
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        # Its start and stop notes are INFO lines on every run: only its warnings are worth a line.
        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
        self._monitor = SystemMetricsMonitor(self.run_id, sampling_interval=interval_s, resume_logging=resumed,
                                             tracking_uri=self.uri)
        self._monitor.start()

    def _stop_system_metrics(self) -> None:
        monitor, self._monitor = self._monitor, None
        if monitor is not None:
            monitor.finish()  # joins the thread (it wakes at once) and writes what it had gathered

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

    def log_weights(self, model, artifact_path: str = "checkpoint") -> None:
        """The model's weights as `<artifact_path>/last.pt` ({"model": state_dict}, CPU tensors, so a
        plain `torch.load` works on any machine). The resume checkpoints, with optimizer and RNG
        state, stay under runs/checkpoints/ only while the run is unfinished."""
        import torch

        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "last.pt"
            torch.save({"model": state}, path)
            self.log_file(path, artifact_path)

    # -- lifecycle ------------------------------------------------------------------------------

    def finish(self) -> None:
        if not self.ended:
            self._stop_system_metrics()
            self.flush()
            self.client.set_terminated(self.run_id, "FINISHED")
            self.ended = True

    def fail(self, error: BaseException) -> None:
        """FAILED with the reason as a tag and the traceback as an artifact; never raises itself."""
        reason = str(error) or type(error).__name__
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        # An error that words its own reason (a full disk: "no space left on device: <path>") keeps it.
        self._record_end(getattr(error, "run_reason", None) or f"{type(error).__name__}: {reason}", text, "FAILED")

    def kill(self, reason: str) -> None:
        """KILLED with the reason; never raises itself (see `fail`)."""
        self._record_end(reason, None, "KILLED")

    def _record_end(self, reason: str, traceback_text: str | None, status: str) -> None:
        # Called while another error unwinds: raising here would bury that error under the
        # store's, so a status that cannot be written is logged and left for cifar-sweep-reap.
        if self.ended:
            return
        for step in (self._stop_system_metrics, self.flush):  # what is in flight lands first, if it can
            try:
                step()
            except Exception as err:
                log.warning("run %s: %s failed while ending (%s)", self.run_id, step.__name__.strip("_"), err)
        try:
            reaping.end_run(self.client, self.run_id, status, reason, traceback_text)
            self.ended = True
        except Exception as err:
            log.error("could not mark run %s %s (%s: %s); cifar-sweep-reap marks it later",
                      self.run_id, status, type(err).__name__, reaping.first_line(err))
            if self.on_unrecorded_end is not None:
                self.on_unrecorded_end(status, reason)
