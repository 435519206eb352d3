"""Sweeps whose launching process is killed hard (SIGKILL: the OOM killer, a cluster's hard limit),
through the real CLI in subprocesses, read back through MLflow's client and Optuna's storage.

Nothing is left running: the dead launch's parent run is reaped or ended by the relaunch, parallel
workers stop with their launcher (their runs KILLED, checkpoints intact), a killed Optuna trial is
failed and retried; every interrupted run is resumed by the relaunch with each epoch logged once.
A relaunch with nothing left to run makes no parent run.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from helpers import run_cli
from sweep_helpers import _all_runs, _children, _client, _ok, _parents


# Epochs of a few tenths of a second each: long enough that a job is still training after the kill.
JOB = ["data=synthetic", "data.n_train=800", "data.val_size=100", "data.n_test=100", "model=cnn_simple",
       "trainer.threads=1", "tracking.misclassified_grid=false", "tracking.checkpoint=false",
       "diagnostics.embedding=false", "diagnostics.pr_curves=false", "diagnostics.confusion=false",
       "tracking.system_metrics_s=0"]


class Launch:
    """The CLI in a subprocess of its own session; its output is read in a thread to the very end
    (workers that outlive it keep writing to the same pipe and must never block on it)."""

    def __init__(self, args: list[str], home: Path) -> None:
        env = {**os.environ, "CIFAR_SWEEP_HOME": str(home)}
        env.pop("MLFLOW_RUN_ID", None)
        self.proc = subprocess.Popen([sys.executable, "-m", "cifar_sweep.train", *args], cwd=home, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        self.lines: list[str] = []
        self._new = threading.Condition()
        self.closed = False  # every process that held the pipe has exited
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._new:
                self.lines.append(line)
                self._new.notify_all()
        with self._new:
            self.closed = True
            self._new.notify_all()

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def kill_when(self, seen, timeout: float = 300) -> None:
        """SIGKILL the launching process (only it) as soon as `seen(lines so far)` is true."""
        deadline = time.monotonic() + timeout
        with self._new:
            while not seen(self.lines):
                if self.closed or time.monotonic() > deadline:
                    self.stop()
                    pytest.fail("the sweep ended before the moment to kill it:\n" + self.text[-4000:])
                self._new.wait(1)
        os.kill(self.proc.pid, signal.SIGKILL)
        assert self.proc.wait(timeout=30) == -signal.SIGKILL

    def wait_closed(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._new:
            while not self.closed and time.monotonic() < deadline:
                self._new.wait(1)
            return self.closed

    def stop(self) -> None:
        """Whatever is left of the session this test started (a worker that outlived its launcher)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _epoch_line(job: int | None, epoch: int):
    """True once job `job` (Hydra's "#N : " announcement; None: any job) has printed `epoch`."""
    def seen(lines: list[str]) -> bool:
        started = job is None
        for line in lines:
            started = started or f"#{job} : " in line
            if started and line.startswith(f'{{"epoch": {epoch},'):
                return True
        return False
    return seen


def _steps(home: Path, run_id: str, key: str = "val_acc") -> list[int]:
    return sorted(m.step for m in _client(home).get_metric_history(run_id, key))


def _alive(pid: int) -> bool:
    """Running, not a zombie (an orphan's exit waits for whoever adopted it to reap it)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.cli
@pytest.mark.slow  # about a minute: a sweep, killed, then relaunched
def test_killed_sweep_parent_is_reaped_its_job_resumed_and_a_full_relaunch_makes_no_parent(tmp_path):
    sweep = ["-m", *JOB, "trainer.epochs=6", "seed=0,1,2"]
    launch = Launch(sweep, tmp_path)
    try:
        launch.kill_when(_epoch_line(1, 1))
    finally:
        launch.stop()
    runs = _all_runs(tmp_path)
    (parent,) = _parents(runs)
    tags = parent.data.tags
    assert parent.info.status == "RUNNING"  # nobody was alive to end it
    assert tags["pid"] == str(launch.proc.pid) and tags["host"] == socket.gethostname()
    assert abs(float(tags["heartbeat"]) - time.time()) < 600
    first, killed = _children(runs, parent)
    assert (first.info.status, killed.info.status) == ("FINISHED", "RUNNING")

    res = run_cli(["--tracking-uri", f"sqlite:///{tmp_path}/runs/mlflow.db"], tmp_path,
                  module="cifar_sweep.commands.reap")
    assert res.returncode == 0, _ok(res)
    assert f"marked KILLED: {parent.info.run_id}" in res.stdout and f"marked KILLED: {killed.info.run_id}" in res.stdout
    reaped = _client(tmp_path).get_run(parent.info.run_id)
    assert reaped.info.status == "KILLED" and reaped.data.tags["sweep_status"] == "KILLED"
    assert reaped.data.tags["failure_reason"] == (f"reaped: sweep launcher: process {launch.proc.pid} on "
                                                  f"{socket.gethostname()} is gone")

    res = run_cli(sweep, tmp_path)  # the relaunch: #0 skipped, #1 resumes its own run, #2 runs
    assert res.returncode == 0, _ok(res)
    assert "3 jobs: 1 skipped, 2 finished" in res.stdout, _ok(res)
    resumed = _client(tmp_path).get_run(killed.info.run_id)
    assert resumed.info.status == "FINISHED" and "resumed_from_epoch" in resumed.data.tags
    assert _steps(tmp_path, killed.info.run_id) == list(range(6))  # each epoch once, no gap
    runs = _all_runs(tmp_path)
    assert len(_parents(runs)) == 2 and len(runs) == 2 + 3

    res = run_cli(sweep, tmp_path)  # every job has its FINISHED run now
    assert res.returncode == 0, _ok(res)
    assert ("cifar_sweep: nothing to run: each of the 3 jobs of this sweep already has a FINISHED run"
            in res.stdout), _ok(res)
    assert "sweep summary" not in res.stdout and "Launching" not in res.stdout + res.stderr
    assert len(_all_runs(tmp_path)) == len(runs)  # no new parent run, no new job run


@pytest.mark.cli
@pytest.mark.slow  # about a minute: a sweep, killed, then relaunched
def test_parallel_workers_stop_with_their_killed_launcher_and_the_relaunch_resumes_them(tmp_path):
    epochs = 12
    sweep = ["-m", *JOB, f"trainer.epochs={epochs}", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2",
             "seed=0,1,2"]
    launch = Launch(sweep, tmp_path)
    try:
        launch.kill_when(_epoch_line(None, 1))
        # The workers stop by themselves: every process that shared the launcher's output is gone.
        closed = launch.wait_closed(timeout=45)
        held = [r for r in _all_runs(tmp_path) if r.data.tags.get("pid", "").isdigit()]
        alive = [r.data.tags["pid"] for r in held if _alive(int(r.data.tags["pid"]))]
    finally:
        launch.stop()
    said = "\n".join(line for line in launch.text.splitlines() if "ERROR" in line or "WARNING" in line)
    assert closed and not alive, f"workers outlived their launcher: {alive}\n{said}"
    assert "could not mark run" not in launch.text, launch.text[-3000:]  # each run's end was written

    runs = _all_runs(tmp_path)
    (parent,) = _parents(runs)
    jobs = _children(runs, parent)
    assert parent.info.status == "RUNNING" and jobs  # the dead launch's parent: the relaunch ends it
    stopped = [j for j in jobs if j.info.status == "KILLED"]
    assert stopped and all(j.info.status in ("KILLED", "FINISHED") for j in jobs), [j.info.status for j in jobs]
    for job in stopped:
        reason = job.data.tags["failure_reason"]
        assert reason.startswith(f"the sweep's launcher (process {launch.proc.pid} on ") and "is gone" in reason
        logged = _steps(tmp_path, job.info.run_id)
        assert len(logged) < epochs
        if logged:  # a job stopped after an epoch keeps that epoch's checkpoint for the relaunch
            assert (Path(job.data.tags["checkpoint_dir"]) / "last.pt").is_file()

    res = run_cli(sweep, tmp_path, timeout=600)
    assert res.returncode == 0, _ok(res)
    runs = _all_runs(tmp_path)
    old, new = _parents(runs)
    assert old.info.run_id == parent.info.run_id and old.info.status == "KILLED"
    assert old.data.tags["failure_reason"] == (f"sweep launcher: process {launch.proc.pid} on {socket.gethostname()}"
                                               f" is gone; relaunched as sweep parent {new.info.run_id}")
    assert new.info.status == "FINISHED" and new.data.tags["relaunch_of"] == old.info.run_id
    trained = [r for r in runs if r.data.tags.get("sweep_parent") != "true"]
    finished = [r for r in trained if r.info.status == "FINISHED"]
    assert len(finished) == 3  # every job once
    # A job stopped before its first checkpoint had nothing to resume: its KILLED run stays, empty,
    # and the relaunch trains that job afresh. Every job stopped later resumes into its own run.
    assert all(r.info.status == "KILLED" and not _steps(tmp_path, r.info.run_id)
               for r in trained if r.info.status != "FINISHED")
    for job in stopped:
        if _steps(tmp_path, job.info.run_id):
            run = _client(tmp_path).get_run(job.info.run_id)
            assert run.info.status == "FINISHED" and "resumed_from_epoch" in run.data.tags
    for run in finished:
        assert _steps(tmp_path, run.info.run_id) == list(range(epochs))  # no duplicate, no gap


@pytest.mark.cli
@pytest.mark.slow  # about a minute: a sweep, killed, then relaunched
def test_killed_optuna_trial_is_failed_counted_and_retried_into_its_run(tmp_path):
    import optuna

    epochs = 6
    search = ["-m", *JOB, f"trainer.epochs={epochs}", "hydra/sweeper=optuna", "hydra.sweeper.sampler.seed=0",
              "optimizer.lr=tag(log, interval(1e-3, 1e-1))"]
    launch = Launch([*search, "hydra.sweeper.n_trials=2"], tmp_path)
    try:
        launch.kill_when(_epoch_line(1, 1))
    finally:
        launch.stop()
    storage = f"sqlite:///{tmp_path}/runs/optuna.db"
    (name,) = optuna.get_all_study_names(storage)
    trials = optuna.load_study(study_name=name, storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "RUNNING"]  # what the killed launch left
    (parent,) = _parents(_all_runs(tmp_path))
    killed = _children(_all_runs(tmp_path), parent)[1]
    assert killed.info.status == "RUNNING"

    res = run_cli([*search, "hydra.sweeper.n_trials=1"], tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode == 0, _ok(res)
    assert (f"trial 1 was left RUNNING by a launch whose process {launch.proc.pid} on {socket.gethostname()} "
            "is gone: told FAIL; its point is asked first again") in out, _ok(res)
    assert ("continuing it, the same search: 2 trials so far, 1 more over optimizer.lr (the study's trials by "
            "state: 1 complete, 1 failed, 1 queued)") in out, _ok(res)
    trials = optuna.load_study(study_name=name, storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert trials[2].params == trials[1].params and trials[2].user_attrs["retry_of"] == 1

    runs = _all_runs(tmp_path)
    old = next(p for p in _parents(runs) if p.info.run_id == parent.info.run_id)
    assert old.info.status == "KILLED" and "relaunched as sweep parent" in old.data.tags["failure_reason"]
    resumed = _client(tmp_path).get_run(killed.info.run_id)  # the retry continued the killed trial's run
    assert resumed.info.status == "FINISHED" and "resumed_from_epoch" in resumed.data.tags
    assert _steps(tmp_path, killed.info.run_id) == list(range(epochs))
    assert len([r for r in runs if r.data.tags.get("sweep_parent") != "true"]) == 2


# -- the parts, in process (fast) -------------------------------------------------------------------

_CHILD = """
import socket, sys, time
from cifar_sweep.sweeps.watchdog import watch_launcher
from cifar_sweep.tracking.lifecycle import run_lifecycle

class Tracker:  # what the lifecycle tells the run
    def kill(self, reason):
        open(sys.argv[2], "w").write(reason)
    def finish(self):
        open(sys.argv[2], "w").write("FINISHED")
    def fail(self, error):
        open(sys.argv[2], "w").write("FAILED")

assert watch_launcher(int(sys.argv[1]), socket.gethostname(), poll_s=0.05)
with run_lifecycle(Tracker()):
    print("training", flush=True)
    time.sleep(120)
"""
_LAUNCHER = """
import os, subprocess, sys
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], str(os.getpid()), sys.argv[2]])
print(child.pid, flush=True)
child.wait()
"""


def test_a_job_process_ends_its_run_killed_when_its_launcher_dies(tmp_path):
    import psutil

    said = tmp_path / "end.txt"
    launcher = subprocess.Popen([sys.executable, "-c", _LAUNCHER, _CHILD, str(said)], stdout=subprocess.PIPE,
                                text=True, start_new_session=True)
    try:
        child = int(launcher.stdout.readline())
        assert launcher.stdout.readline() == "training\n"  # the child's run is in its body now
        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait(timeout=10)
        deadline = time.monotonic() + 30
        while not said.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert said.read_text() == (f"the sweep's launcher (process {launcher.pid} on {socket.gethostname()}) is "
                                    "gone; relaunch the sweep to resume this run from its last checkpoint")
        while time.monotonic() < deadline:
            try:
                if psutil.Process(child).status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the job process outlived its launcher")
    finally:
        try:
            os.killpg(launcher.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_job_in_the_launcher_or_not_below_it_is_not_watched():
    from cifar_sweep.sweeps.watchdog import watch_launcher

    assert not watch_launcher(os.getpid(), socket.gethostname())  # the basic launcher: the job dies with it
    assert not watch_launcher(os.getppid(), "another-host")
    assert not watch_launcher(None, None)
    sibling = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:  # alive, on this host, but not an ancestor: SLURM running a job on the launcher's host
        assert not watch_launcher(sibling.pid, socket.gethostname())
    finally:
        sibling.kill()
        sibling.wait()
    assert "cifar-sweep-launcher-watch" not in {t.name for t in threading.enumerate()}


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_a_relaunch_ends_only_the_dead_launches_of_its_own_sweep(tmp_path):
    from cifar_sweep.tracking.run import RunTracker
    from cifar_sweep.tracking.sweep_runs import create_parent_run

    uri, host, dead = f"sqlite:///{tmp_path}/mlflow.db", socket.gethostname(), _dead_pid()

    def parent(key, pid):
        return create_parent_run(uri, "exp", "sweep", {"sweep_parent": "true", "sweep_key": key, "host": host,
                                                       "pid": pid}).run_id

    live, gone, other = parent("k", os.getpid()), parent("k", dead), parent("other", dead)
    job_gone = RunTracker.start(uri, "exp", "job", {"host": host, "pid": dead}, parent_run_id=gone).run_id
    job_live = RunTracker.start(uri, "exp", "job", {"host": host, "pid": os.getpid()}, parent_run_id=gone).run_id

    new = create_parent_run(uri, "exp", "sweep", {"sweep_parent": "true", "sweep_key": "k", "host": host,
                                                  "pid": os.getpid()})
    assert new.ended == (gone,)
    client = _client_at(uri)
    status = {run_id: client.get_run(run_id).info.status for run_id in (live, gone, other, job_gone, job_live)}
    assert status == {live: "RUNNING", gone: "KILLED", other: "RUNNING", job_gone: "KILLED", job_live: "RUNNING"}
    assert client.get_run(gone).data.tags["failure_reason"] == (
        f"sweep launcher: process {dead} on {host} is gone; relaunched as sweep parent {new.run_id}")
    assert client.get_run(new.run_id).data.tags["relaunch_of"] == gone
    assert client.get_run(job_gone).data.tags["failure_reason"].startswith(f"process {dead} on {host} is gone")


def test_a_parent_heartbeat_beats_until_stopped(tmp_path):
    from cifar_sweep.tracking.sweep_runs import ParentHeartbeat, create_parent_run

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_id = create_parent_run(uri, "exp", "sweep", {"sweep_parent": "true"}).run_id
    client = _client_at(uri)
    first = float(client.get_run(run_id).data.tags["heartbeat"])
    beat = ParentHeartbeat(uri, run_id, interval_s=0.05).start()
    deadline = time.monotonic() + 30
    while float(client.get_run(run_id).data.tags["heartbeat"]) == first:
        assert time.monotonic() < deadline, "no heartbeat"
        time.sleep(0.1)
    beat.stop()
    assert not any(t.name == "cifar-sweep-parent-heartbeat" for t in threading.enumerate())


def _client_at(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def test_a_stop_asked_by_another_thread_waits_until_the_main_thread_is_out_of_the_store():
    from cifar_sweep.tracking.lifecycle import Terminated, _OnSigterm

    def frame_in(module: str):
        scope = {"__name__": module}
        exec("import sys\ndef here():\n    return sys._getframe()", scope)
        return scope["here"]()

    handler = _OnSigterm()
    handler.reason, handler.requested = "the launcher is gone", True
    assert handler(signal.SIGTERM, frame_in("sqlalchemy.engine.base")) is None  # not now: signalled again
    with pytest.raises(Terminated, match="the launcher is gone"):
        handler(signal.SIGTERM, frame_in("cifar_sweep.training.loop"))
    assert handler(signal.SIGTERM, frame_in("cifar_sweep.training.loop")) is None  # ending already: once
    plain = _OnSigterm()  # a SIGTERM from outside unwinds at once, wherever the run is
    with pytest.raises(Terminated, match="terminated"):
        plain(signal.SIGTERM, frame_in("mlflow.store.tracking.sqlalchemy_store"))
