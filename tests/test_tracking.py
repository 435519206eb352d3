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
from cifar_sweep.tracking.run import RunTracker, TrackingUnavailable, ensure_experiment, git_commit
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
    stale = reaping.find_stale(client, stale_after_s=3600)
    assert [s.run_id for s in stale] == [gone.run_id]
    assert f"process {pid}" in stale[0].reason
    reaping.mark_killed(client, gone.run_id, "reaped: " + stale[0].reason)
    run = client.get_run(gone.run_id)
    assert run.info.status == "KILLED" and run.data.tags["failure_reason"].startswith("reaped: process")
    assert reaping.find_stale(client, stale_after_s=3600) == []
    for tracker in (alive, parent):
        tracker.finish()


def test_git_commit_outside_a_checkout_is_none(tmp_path):
    assert git_commit(tmp_path) is None
