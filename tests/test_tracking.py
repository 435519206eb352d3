"""RunTracker on its own against a temporary SQLite store: lifecycle, values, files, reaping.

The store is created once for the module (MLflow's migrations take seconds); every test starts its
own run in it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from cifar_sweep.tracking import reaping
from cifar_sweep.tracking.run import RunTracker, git_commit
from cifar_sweep.tracking.store import TrackingUnavailable, ensure_experiment
from cifar_sweep.tracking.store import StoreError

EXPERIMENT = "tracker_tests"


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('tracker_store') / 'mlflow.db'}"


@pytest.fixture
def tracker(uri):
    return RunTracker.start(uri, EXPERIMENT, "a run", {"model": "logreg", "skipped": None})


def _run(uri, run_id):
    return MlflowClient(uri).get_run(run_id)


def _artifact(uri, run_id, path, tmp_path) -> str:
    local = MlflowClient(uri).download_artifacts(run_id, path, str(tmp_path))
    with open(local, encoding="utf-8") as fh:
        return fh.read()


def test_start_then_finish(uri, tracker):
    run = _run(uri, tracker.run_id)
    assert run.info.status == "RUNNING" and run.info.run_name == "a run"
    assert run.data.tags["model"] == "logreg" and "skipped" not in run.data.tags  # None tags are left out
    assert MlflowClient(uri).get_experiment(run.info.experiment_id).name == EXPERIMENT
    tracker.log_metrics({"val_acc": 0.5, "none": None}, step=0)
    tracker.set_tags({"pid": 123})
    tracker.finish()
    tracker.finish()  # ending twice is harmless
    run = _run(uri, tracker.run_id)
    assert run.info.status == "FINISHED" and run.info.end_time is not None
    assert run.data.metrics == {"val_acc": 0.5} and run.data.tags["pid"] == "123"
    assert RunTracker.status_of(uri, tracker.run_id) == "FINISHED"


def test_child_run_points_to_its_parent(uri, tracker):
    child = RunTracker.start(uri, EXPERIMENT, "child", {}, parent_run_id=tracker.run_id)
    assert _run(uri, child.run_id).data.tags["mlflow.parentRunId"] == tracker.run_id


def test_fail_records_reason_and_traceback(uri, tracker, tmp_path):
    try:
        raise ValueError("boom")
    except ValueError as err:
        tracker.fail(err)
    run = _run(uri, tracker.run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["failure_reason"] == "ValueError: boom"
    text = _artifact(uri, tracker.run_id, "traceback.txt", tmp_path)
    assert "Traceback" in text and "ValueError: boom" in text


def test_kill_records_reason(uri, tracker):
    tracker.kill("interrupted (SIGINT)")
    run = _run(uri, tracker.run_id)
    assert run.info.status == "KILLED" and run.data.tags["failure_reason"] == "interrupted (SIGINT)"


def test_ending_never_raises_when_the_store_cannot_be_written(uri, tracker, monkeypatch):
    def full(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tracker.client, "set_tag", full)
    monkeypatch.setattr(tracker.client, "set_terminated", full)
    tracker.fail(RuntimeError("the real error"))  # must not bury the real error under the store's
    monkeypatch.undo()
    assert _run(uri, tracker.run_id).info.status == "RUNNING"  # left for the reaper
    assert not tracker.ended


def test_reopen_goes_back_to_running(uri, tracker):
    tracker.log_metrics({"val_acc": 0.4}, step=0)
    tracker.kill("terminated (SIGTERM)")
    again = RunTracker.reopen(uri, tracker.run_id)
    run = _run(uri, again.run_id)
    assert again.run_id == tracker.run_id and run.info.status == "RUNNING"
    assert run.data.tags["failure_reason"] == ""
    assert again.logged_steps("val_acc") == {0}
    again.finish()
    assert RunTracker.status_of(uri, tracker.run_id) == "FINISHED"


def test_status_of_unknown_run_or_store_is_none(uri, tmp_path):
    assert RunTracker.status_of(uri, "0" * 32) is None
    missing = tmp_path / "nowhere.db"
    assert RunTracker.status_of(f"sqlite:///{missing}", "0" * 32) is None
    assert not missing.exists()  # asking never creates a store


def test_overlong_param_goes_to_an_artifact(uri, tracker, tmp_path):
    long = "x" * 7000
    tracker.log_params({"short": 1, "none": None, "long": long, **{f"p{i}": i for i in range(150)}})
    params = _run(uri, tracker.run_id).data.params
    assert params["short"] == "1" and params["none"] == "None" and params["p149"] == "149"
    assert "params_too_long.json" in params["long"] and len(params["long"]) < 200
    assert json.loads(_artifact(uri, tracker.run_id, "params_too_long.json", tmp_path)) == {"long": long}


def test_logged_steps(tracker):
    for step in (0, 1, 3):
        tracker.log_metrics({"val_acc": 0.1 * step, "lr": 0.1}, step=step)
    tracker.log_metrics({"val_acc": 0.9}, step=3)  # a repeated step counts once
    assert tracker.logged_steps("val_acc") == {0, 1, 3}
    assert tracker.logged_steps("never_logged") == set()


def test_files(uri, tracker, tmp_path):
    tracker.log_text("hello\n", "notes/hello.txt")
    tracker.log_dict({"a": 1}, "d.json")
    tracker.log_jsonl([{"epoch": 0}, {"epoch": 1}], "epochs.jsonl")
    tracker.log_bytes(b"\x00\x01", "raw/blob.bin")
    assert _artifact(uri, tracker.run_id, "notes/hello.txt", tmp_path) == "hello\n"
    assert _artifact(uri, tracker.run_id, "epochs.jsonl", tmp_path).splitlines() == ['{"epoch": 0}', '{"epoch": 1}']
    names = {f.path for f in MlflowClient(uri).list_artifacts(tracker.run_id, "raw")}
    assert names == {"raw/blob.bin"}


def test_ensure_experiment_is_idempotent(uri):
    assert ensure_experiment(uri, "twice") == ensure_experiment(uri, "twice")


def test_unwritable_store_folder_refused_before_any_run(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(TrackingUnavailable, match="cannot create the folder of the tracking store"):
        RunTracker.start(f"sqlite:///{blocker}/mlflow.db", EXPERIMENT, "x", {})
    assert issubclass(TrackingUnavailable, StoreError)  # the commands print both as one line


def test_mark_killed_and_find_stale(uri):
    client = MlflowClient(uri)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)  # a process that has exited
    host = socket.gethostname()
    gone = RunTracker.start(uri, "reaping", "gone", {"host": host, "pid": pid})
    alive = RunTracker.start(uri, "reaping", "alive", {"host": host, "pid": os.getpid()})
    parent = RunTracker.start(uri, "reaping", "sweep", {"host": host, "pid": pid, "sweep_parent": "true"})
    stale = sorted(reaping.find_stale(client, stale_after_s=3600), key=lambda s: s.parent)
    assert [(s.run_id, s.parent) for s in stale] == [(gone.run_id, False), (parent.run_id, True)]
    assert f"process {pid}" in stale[0].reason and stale[1].reason.startswith(f"sweep launcher: process {pid}")
    reaping.mark_killed(client, gone.run_id, "reaped: " + stale[0].reason)
    run = client.get_run(gone.run_id)
    assert run.info.status == "KILLED" and run.data.tags["failure_reason"].startswith("reaped: process")
    reaping.reap(client, stale[1])  # a sweep's parent whose launching process is gone
    run = client.get_run(parent.run_id)
    assert run.info.status == "KILLED" and run.data.tags["sweep_status"] == "KILLED"
    assert reaping.find_stale(client, stale_after_s=3600) == []
    alive.finish()


def test_git_commit_outside_a_checkout_is_none(tmp_path):
    assert git_commit(tmp_path) is None


# -- what MLflow's UI reads: the experiment's kind, dataset inputs, image series, system metrics ----


def test_experiments_are_model_training_ones(uri):
    from cifar_sweep.tracking.store import EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND

    client = MlflowClient(uri)
    new = ensure_experiment(uri, "kind_new")
    assert client.get_experiment(new).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND
    # One made before the tag existed, one the UI guessed, one a user chose: the first two are tagged.
    old = client.create_experiment("kind_old")
    guessed = client.create_experiment("kind_guessed", tags={EXPERIMENT_KIND_TAG: "genai_development_inferred"})
    chosen = client.create_experiment("kind_chosen", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    for name in ("kind_old", "kind_guessed", "kind_chosen"):
        ensure_experiment(uri, name)
    assert client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND
    assert client.get_experiment(guessed).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND
    assert client.get_experiment(chosen).tags[EXPERIMENT_KIND_TAG] == "genai_development"


def test_dataset_input_reads_back(uri, tracker, tmp_path):
    archive = tmp_path / "cifar10-jpeg.tar.gz"
    archive.write_bytes(b"not read")
    profile = {"train": 45000, "val": 5000, "test": 10000, "classes": 10}
    tracker.log_dataset("cifar10-jpeg", "0123456789abcdef", str(archive), profile)
    tracker.finish()
    (found,) = _run(uri, tracker.run_id).inputs.dataset_inputs
    assert (found.dataset.name, found.dataset.digest) == ("cifar10-jpeg", "0123456789abcdef")
    assert json.loads(found.dataset.profile) == profile
    assert json.loads(found.dataset.source)["uri"] == archive.resolve().as_uri()
    assert {t.key: t.value for t in found.tags} == {"mlflow.data.context": "training"}
    schema = json.loads(found.dataset.schema)["mlflow_colspec"]
    assert [c["name"] for c in schema] == ["image", "label"]


def _series(uri, run_id, key):
    """Steps of an image series, read from the artifact names MLflow gives it."""
    import re

    names = [f.path for f in MlflowClient(uri).list_artifacts(run_id, "images")]
    pattern = rf"images/{key}\+step\+(\d+)\+timestamp\+\d+\+[0-9a-f-]+\.png$"  # not the +compressed.webp previews
    return sorted(int(m.group(1)) for n in names if (m := re.match(pattern, n)))


@pytest.mark.parametrize("end", ["finish", "kill"])
def test_image_series_lands_before_the_run_ends(uri, tracker, end):
    from PIL import Image

    for epoch in range(3):
        tracker.log_image_step(Image.new("RGB", (64, 48), (10 * epoch, 0, 0)), "misclassified", epoch)
    tracker.finish() if end == "finish" else tracker.kill("terminated (SIGTERM)")
    run = _run(uri, tracker.run_id)
    assert run.info.status == ("FINISHED" if end == "finish" else "KILLED")
    assert _series(uri, tracker.run_id, "misclassified") == [0, 1, 2]
    assert run.data.tags["mlflow.loggedImages"] == "True"


def test_system_metrics_are_sampled_until_the_run_ends(uri, tracker):
    import time

    tracker.start_system_metrics(0.2)
    time.sleep(1.5)
    tracker.finish()
    client = MlflowClient(uri)
    steps = [m.step for m in client.get_metric_history(tracker.run_id, "system/cpu_utilization_percentage")]
    assert len(steps) >= 3 and steps == sorted(steps)
    keys = set(_run(uri, tracker.run_id).data.metrics)
    assert {"system/system_memory_usage_megabytes", "system/system_memory_usage_percentage"} <= keys
    time.sleep(0.6)  # the thread is gone: nothing more arrives after the end
    assert len(client.get_metric_history(tracker.run_id, "system/cpu_utilization_percentage")) == len(steps)


def test_resumed_run_continues_the_system_metrics_series(uri, tracker):
    import time

    tracker.start_system_metrics(0.2)
    time.sleep(0.8)
    tracker.kill("interrupted (SIGINT)")
    first = [m.step for m in MlflowClient(uri).get_metric_history(tracker.run_id, "system/cpu_utilization_percentage")]
    again = RunTracker.reopen(uri, tracker.run_id)
    again.start_system_metrics(0.2, resumed=True)
    time.sleep(0.8)
    again.finish()
    steps = [m.step for m in MlflowClient(uri).get_metric_history(tracker.run_id, "system/cpu_utilization_percentage")]
    assert len(steps) > len(first) and len(set(steps)) == len(steps)  # no step logged twice


def test_dataset_digest_is_the_data_not_its_order_or_split():
    import numpy as np

    from cifar_sweep.tracking.run import dataset_digest

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (200, 3, 32, 32), dtype=np.uint8)
    y = rng.integers(0, 10, 200)
    test = [(x[:50], y[:50])]
    base = dataset_digest([(x, y)], test)
    order = rng.permutation(200)
    # Another seed's shuffle and validation hold-out: the same images, the same digest.
    assert dataset_digest([(x[order][:150], y[order][:150]), (x[order][150:], y[order][150:])], test) == base
    changed = x.copy()
    changed[7, 1, 2, 3] ^= 1
    assert dataset_digest([(changed, y)], test) != base  # one pixel
    relabelled = y.copy()
    relabelled[7] = (y[7] + 1) % 10
    assert dataset_digest([(x, relabelled)], test) != base  # one label
    assert dataset_digest([(x, y)], [(x[:49], y[:49])]) != base  # one test image fewer
    assert dataset_digest(test, [(x, y)]) != base  # which part is the training pool matters
    assert len(base) == 16 and int(base, 16) >= 0
