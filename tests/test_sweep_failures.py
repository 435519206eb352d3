"""Sweeps that fail, are interrupted or are refused, through the real CLI in subprocesses: one parent
run per sweep, failure isolation with a summary and a non-zero exit, Ctrl-C, the dry run, and the
relaunch that resumes only what did not finish. Every sweep is tiny: synthetic data, few epochs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from helpers import run_cli
from sweep_helpers import TINY, _all_runs, _children, _client, _ok, _parents

pytestmark = pytest.mark.cli


def test_failed_job_is_isolated_summarised_and_resumed(tmp_path):
    sweep = ["-m", *TINY, "trainer.epochs=2"]
    bad = "data.classes=[cat,dog],[bird,frog],[cat,bogus]"  # the third job fails once its run has started
    res = run_cli([*sweep, bad], tmp_path)
    assert res.returncode != 0, _ok(res)
    assert "sweep summary: 3 jobs: 2 finished, 1 failed" in res.stdout, _ok(res)
    assert "cifar-sweep data=synthetic" in res.stdout and "'data.classes=[cat,bogus]'" in res.stdout  # rerun command
    assert "1 of 3 jobs failed" in res.stderr

    runs = _all_runs(tmp_path)
    (parent,) = _parents(runs)
    children = _children(runs, parent)
    assert [c.info.status for c in children] == ["FINISHED", "FINISHED", "FAILED"]
    assert parent.info.status == "FAILED" and parent.data.tags["sweep_status"] == "FAILED"
    assert parent.data.metrics["jobs_failed"] == 1 and parent.data.metrics["jobs_finished"] == 2
    assert "bogus" in children[2].data.tags["failure_reason"]
    for c in children:
        assert c.data.tags["sweep_id"] == parent.data.tags["sweep_id"]
        assert c.data.tags["config_hash"] and c.info.run_name.startswith("[synthetic[")
    files = [f.path for f in _client(tmp_path).list_artifacts(parent.info.run_id)]
    assert "sweep_summary.txt" in files and "sweep_summary.json" in files

    # Dry run of the very same command: lists the jobs, would rerun only the FAILED one, runs nothing.
    res = run_cli([*sweep, bad, "sweep.dry_run=true"], tmp_path)
    assert res.returncode == 0, _ok(res)
    assert "dry run: 3 jobs, 1 to run, 2 already FINISHED" in res.stdout, _ok(res)
    rows = [line.split() for line in res.stdout.splitlines() if line.strip().startswith("#")]
    assert [(r[0], r[2]) for r in rows] == [("#0", "skip"), ("#1", "skip"), ("#2", "run")]
    assert len({r[1] for r in rows}) == 3  # three configs, three config hashes
    assert len(_all_runs(tmp_path)) == len(runs)

    # The bad value fixed: only that job runs; the two finished ones are skipped, nothing runs twice.
    res = run_cli([*sweep, "data.classes=[cat,dog],[bird,frog],[cat,ship]"], tmp_path)
    assert res.returncode == 0, _ok(res)
    assert "3 jobs: 2 skipped, 1 finished" in res.stdout, _ok(res)
    runs = _all_runs(tmp_path)
    first, second = _parents(runs)
    assert second.info.status == "FINISHED"
    (rerun,) = _children(runs, second)
    assert rerun.info.status == "FINISHED" and rerun.data.params["data.classes"] == "['cat', 'ship']"
    finished = [(r.data.tags["config_hash"], r.data.params["seed"]) for r in runs
                if r.info.status == "FINISHED" and "config_hash" in r.data.tags]
    assert len(finished) == len(set(finished)) == 3


def test_ctrl_c_ends_the_sweep_killed_and_lists_what_did_not_run(tmp_path):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) during job #1 of 3."""
    sweep = ["-m", *TINY, "trainer.epochs=6", "seed=0,1,2"]
    env = {**os.environ, "CIFAR_SWEEP_HOME": str(tmp_path)}
    # SIG_DFL first: a shell's background job ignores SIGINT, and its children would inherit that.
    proc = subprocess.Popen([sys.executable, "-m", "cifar_sweep.train", *sweep], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    out, in_job_1 = [], False
    for line in proc.stdout:
        out.append(line)
        in_job_1 = in_job_1 or "#1 : " in line  # Hydra announces each job as it launches it
        if in_job_1 and line.startswith('{"epoch": 1'):
            os.killpg(proc.pid, signal.SIGINT)
            break
    else:
        proc.wait()
        pytest.fail("the sweep ended before job #1 trained:\n" + "".join(out)[-3000:])
    out.append(proc.stdout.read())
    text = "".join(out)
    assert proc.wait(timeout=60) == 130, text[-3000:]
    assert "sweep summary (interrupted): 3 jobs: 1 finished, 1 killed, 1 not run" in text, text[-3000:]
    assert "#1 KILLED: interrupted (SIGINT)" in text and "cifar-sweep data=synthetic" in text
    rerun = next(line for line in text.splitlines() if line.strip().startswith("cifar-sweep data=synthetic"))
    assert rerun.strip().endswith("seed=1")  # the interrupted job's own command
    assert "#2 " not in text.split("failed jobs")[1].split("or relaunch")[0]  # not run is not a failure

    runs = _all_runs(tmp_path)
    (parent,) = _parents(runs)
    assert parent.info.status == "KILLED" and parent.data.tags["sweep_status"] == "KILLED"
    metrics = parent.data.metrics
    counts = [metrics[f"jobs_{k}"] for k in ("finished", "killed", "not_run", "total")]
    assert counts == [1, 1, 1, 3]
    killed = _children(runs, parent)
    assert [c.info.status for c in killed] == ["FINISHED", "KILLED"]

    # The same command again: #0 is skipped, #1 resumes its own run and names the sweep that resumed it.
    res = run_cli(sweep, tmp_path)
    assert res.returncode == 0, _ok(res)
    assert "3 jobs: 1 skipped, 2 finished" in res.stdout, _ok(res)
    second = _parents(_all_runs(tmp_path))[1]
    resumed = _client(tmp_path).get_run(killed[1].info.run_id)
    assert resumed.info.status == "FINISHED" and resumed.data.tags["resumed_by_sweep"] == second.data.tags["sweep_id"]
    history = _client(tmp_path).get_metric_history(resumed.info.run_id, "val_acc")
    assert sorted(m.step for m in history) == list(range(6))  # each epoch once, across the interruption


def test_grid_with_jobs_that_cannot_start_is_refused_before_anything_runs(tmp_path):
    sweep = ["-m", *TINY, "trainer.epochs=1", "optimizer.lr=0.1,-1", "seed=0,1"]
    res = run_cli(sweep, tmp_path)
    assert res.returncode == 1, _ok(res)
    assert "the sweep was refused, nothing was run" in res.stderr
    refused = [line.strip() for line in res.stderr.splitlines() if line.strip().startswith("job #")]
    assert [line.split(" ", 2)[1] for line in refused] == ["#2", "#3"], res.stderr  # every bad job, only those
    assert all("optimizer.lr=-1 must be a positive number" in line for line in refused)
    assert '"epoch"' not in res.stdout and not (tmp_path / "runs" / "mlflow.db").exists()  # no parent, no run

    res = run_cli([*sweep, "sweep.dry_run=true"], tmp_path)  # the dry run shows the same refusals
    assert res.returncode == 0 and "2 refused (the sweep would not start)" in res.stdout, _ok(res)
    assert sum("refused: optimizer.lr=-1" in line for line in res.stdout.splitlines()) == 2
