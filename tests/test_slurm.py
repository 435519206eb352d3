"""Sweeps on a real SLURM cluster (tests/slurm_cluster.py: one node, 2 CPUs) logging to a real MLflow
tracking server on PostgreSQL (tests/tracking_server_fixtures.py), through Hydra's submitit launcher:
`hydra/launcher=slurm` as a cluster user runs it, with the resources a 2-core test machine has.

A sweep's jobs finish as one run each under one parent, tagged with their SLURM job ids; the same
command again runs nothing; a job preempted mid-run (SIGUSR2, what SLURM sends before a time limit or
on preemption) is requeued by submitit and continues its own MLflow run; a job that fails leaves its
run FAILED with the reason while the others finish; and a cluster that cannot take the sweep (no
`sbatch`, no such partition) is refused in one line before any run exists.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import run_cli
from mlflow.tracking import MlflowClient

from cifar_sweep.sweeps.slurm import SlurmUnavailable, check_slurm, slurm_tags

# The cluster tests: a cluster, a server and 6 short SLURM jobs, 90 s on an idle 2-core machine, about
# 3 minutes on a busy one. The first tests run in process, in the fast tier.

# What a user of conf/hydra/launcher/slurm.yaml overrides for this cluster: its partition, no GPU,
# one CPU and a little memory per job.
SLURM = ["hydra/launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.gpus_per_node=0",
         "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=10"]
SWEEP = ["-m", *SLURM, "data=synthetic", "model=logreg", "trainer.epochs=2", "seed=0,1,2"]
EPOCH_METRICS = ("train_loss", "val_acc", "epoch_time_s")


def test_slurm_tags_name_the_job_as_squeue_does():
    array_task = {"SLURM_JOB_ID": "17", "SLURM_ARRAY_JOB_ID": "12", "SLURM_ARRAY_TASK_ID": "3",
                  "SLURM_RESTART_COUNT": "1"}
    assert slurm_tags(array_task) == {"slurm_job_id": "12_3", "slurm_restarts": "1"}
    assert slurm_tags({"SLURM_JOB_ID": "17"}) == {"slurm_job_id": "17", "slurm_restarts": "0"}
    assert slurm_tags({}) == {"slurm_job_id": None, "slurm_restarts": None}  # None: no tag at all


def _fake_slurm(folder: Path, partitions: str, sinfo_exit: int = 0) -> str:
    """A PATH holding stand-ins for sbatch and sinfo (what check_slurm asks), nothing else."""
    folder.mkdir()
    (folder / "sbatch").write_text("#!/bin/sh\nexit 1\n")
    (folder / "sinfo").write_text(f"#!/bin/sh\necho 'sinfo: error: {partitions}' >&2\nexit {sinfo_exit}\n"
                                  if sinfo_exit else f"#!/bin/sh\nprintf '{partitions}'\n")
    for tool in folder.iterdir():
        tool.chmod(0o755)
    return str(folder)


def test_check_slurm_refuses_what_the_cluster_cannot_take(compose_cfg, tmp_path, monkeypatch):
    cfg = compose_cfg(["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], return_hydra_config=True)
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch at all
    with pytest.raises(SlurmUnavailable) as err:
        check_slurm(cfg)
    line = err.value.one_line()
    assert "needs SLURM's `sbatch` on the PATH" in line and "hydra/launcher=local" in line, line
    monkeypatch.setenv("PATH", _fake_slurm(tmp_path / "cluster", "debug\\nlong\\n"))
    with pytest.raises(SlurmUnavailable) as err:
        check_slurm(cfg)
    assert err.value.one_line() == ("hydra.launcher.partition=gpu is not a partition of this cluster; "
                                    "set hydra.launcher.partition to one of: debug, long")
    check_slurm(compose_cfg(["hydra/launcher=slurm", "hydra.launcher.partition=long"], return_hydra_config=True))
    check_slurm(compose_cfg(["hydra/launcher=slurm"], return_hydra_config=True))  # the default partition
    monkeypatch.setenv("PATH", _fake_slurm(tmp_path / "down", "Unable to contact slurm controller", sinfo_exit=1))
    with pytest.raises(SlurmUnavailable, match="controller does not answer .*Unable to contact slurm controller"):
        check_slurm(cfg)
    monkeypatch.setenv("PATH", str(tmp_path))
    check_slurm(compose_cfg(return_hydra_config=True))  # another launcher: SLURM is not asked for


def _ok(res: subprocess.CompletedProcess) -> str:
    return f"exit {res.returncode}\n--- stdout\n{res.stdout[-3000:]}\n--- stderr\n{res.stderr[-3000:]}"


def _runs(url: str, experiment: str) -> list:
    client = MlflowClient(url)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], max_results=1000) if exp else []


def _children(runs: list) -> list:
    return sorted((r for r in runs if r.data.tags.get("mlflow.parentRunId")), key=lambda r: int(r.data.tags["job_num"]))


def _sweep(args: list[str], url: str, experiment: str, home: Path, timeout: float = 420):
    started = time.monotonic()
    res = run_cli([*args, f"tracking.uri={url}", f"tracking.experiment={experiment}"], home, timeout=timeout)
    print(f"{' '.join(args)}: {time.monotonic() - started:.0f} s")
    return res


@pytest.fixture(scope="module")
def sweep(slurm, tracking_server, tmp_path_factory):
    """Three jobs as one SLURM array, against the server; (result, runs, home, url)."""
    url, _ = tracking_server
    home = tmp_path_factory.mktemp("slurm_home")
    res = _sweep(SWEEP, url, "slurm", home)
    assert res.returncode == 0, _ok(res)
    print(res.stdout[res.stdout.find("sweep summary"):])  # what the user sees (docs/scaling.md shows it)
    return res, _runs(url, "slurm"), home, url


@pytest.mark.slow
@pytest.mark.cli
def test_sweep_finishes_each_job_as_a_run_tagged_with_its_slurm_job(sweep, slurm):
    res, runs, home, url = sweep
    children = _children(runs)
    parents = [r for r in runs if r.data.tags.get("sweep_parent") == "true"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED", [(r.info.run_name, r.info.status) for r in runs]
    assert parents[0].data.tags["launcher"] == "slurm"
    assert [c.info.status for c in children] == ["FINISHED"] * 3
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parents[0].info.run_id}
    assert sorted(int(c.data.params["seed"]) for c in children) == [0, 1, 2]
    # One array job, one task per Hydra job: <array id>_<job num>, as squeue names them.
    job_ids = [c.data.tags["slurm_job_id"] for c in children]
    (array,) = {j.split("_")[0] for j in job_ids}
    assert job_ids == [f"{array}_{n}" for n in range(3)], job_ids
    assert all(c.data.tags["slurm_restarts"] == "0" for c in children)
    assert all(c.data.params["trainer.threads"] in ("None", "1") for c in children)
    client = MlflowClient(url)
    for c in children:
        for key in EPOCH_METRICS:
            steps = sorted(m.step for m in client.get_metric_history(c.info.run_id, key))
            assert steps == [0, 1], (c.info.run_name, key, steps)
    # The array as submitit wrote it for sbatch: 3 tasks (all at once: array_parallelism caps at 64), 1 CPU
    # each, on `debug`, warned with SIGUSR2 before the time limit.
    (script,) = home.glob("runs/multirun/*/*/.submitit/*/*_submission.sh")
    text = script.read_text()
    for line in ("#SBATCH --array=0-2%3", "#SBATCH --cpus-per-task=1", "#SBATCH --partition=debug",
                 "#SBATCH --signal=USR2@"):
        assert line in text, text
    assert "sweep summary: 3 jobs: 3 finished" in res.stdout, _ok(res)


@pytest.mark.slow
@pytest.mark.cli
def test_relaunch_skips_the_finished_jobs(sweep, slurm):
    _, runs, home, url = sweep
    before = sorted(slurm.run("squeue", "-h", "--states=all", "-o", "%i").stdout.split())
    res = _sweep(SWEEP, url, "slurm", home)
    assert res.returncode == 0, _ok(res)
    assert "nothing to run: each of the 3 jobs of this sweep already has a FINISHED run" in res.stdout, _ok(res)
    assert len(_runs(url, "slurm")) == len(runs)  # no new parent, no new job run
    assert sorted(slurm.run("squeue", "-h", "--states=all", "-o", "%i").stdout.split()) == before  # none submitted


def _wait_for_checkpoint(home: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not list((home / "runs" / "checkpoints").glob("*/*/last.pt")):  # epoch 0 is done
        assert proc.poll() is None, f"the sweep ended before a checkpoint appeared:\n{proc.communicate()[0][-3000:]}"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.5)


@pytest.mark.slow
@pytest.mark.cli
def test_preempted_job_is_requeued_into_the_same_run(slurm, tracking_server, tmp_path):
    url, _ = tracking_server
    args = ["-m", *SLURM, "data=synthetic", "model=cnn_simple", "trainer.epochs=3", "seed=0",
            f"tracking.uri={url}", "tracking.experiment=slurm_requeue"]
    env = {**os.environ, "CIFAR_SWEEP_HOME": str(tmp_path)}
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "cifar_sweep.train", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for_checkpoint(tmp_path, proc)
        (job,) = [line.split()[0] for line in slurm.queue() if " RUNNING " in f" {line} "]
        # What SLURM sends `signal_delay_s` before the time limit, or on preemption: submitit's handler
        # asks the launcher to checkpoint, runs `scontrol requeue` and exits.
        res = slurm.run("scancel", "--signal=USR2", job)
        assert res.returncode == 0, res.stderr
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    print(f"requeued sweep: {time.monotonic() - started:.0f} s")
    assert proc.returncode == 0, out[-3000:]
    (run,) = _children(_runs(url, "slurm_requeue"))  # one run: the requeued job continued it
    assert run.info.status == "FINISHED", run.data.tags.get("failure_reason")
    assert run.data.tags["slurm_job_id"] == job and run.data.tags["slurm_restarts"] == "1"
    assert int(run.data.tags["resumed_from_epoch"]) >= 0
    client = MlflowClient(url)
    for key in EPOCH_METRICS:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert sorted(steps) == [0, 1, 2], (key, steps)  # every epoch once: none lost, none twice
    logs = "".join(p.read_text(errors="replace") for p in tmp_path.glob("runs/multirun/*/*/.submitit/*/*_log.*"))
    assert "Caught signal SIGUSR2" in logs and "resumed from" in logs, logs[-3000:]
    assert "Traceback" not in logs, logs[-3000:]  # the KILLED status on the way out was written whole
    print("\n".join(line for line in logs.splitlines() if "sacct" not in line))


@pytest.mark.slow
@pytest.mark.cli
def test_failed_job_is_failed_with_its_reason_and_the_others_finish(slurm, tracking_server, tmp_path):
    url, _ = tracking_server
    bad = "data.classes=[cat,dog],[cat,bogus]"  # the second job fails once its run has started
    args = ["-m", *SLURM, "data=synthetic", "model=logreg", "trainer.epochs=1", "data.val_size=40", bad]
    res = _sweep(args, url, "slurm_fail", tmp_path)
    assert res.returncode != 0, _ok(res)
    assert "sweep summary: 2 jobs: 1 finished, 1 failed" in res.stdout, _ok(res)
    runs = _runs(url, "slurm_fail")
    children = _children(runs)
    assert [c.info.status for c in children] == ["FINISHED", "FAILED"]
    assert "bogus" in children[1].data.tags["failure_reason"]
    assert all(c.data.tags.get("slurm_job_id") for c in children)
    assert not [r for r in runs if r.info.status == "RUNNING"]


@pytest.mark.slow
@pytest.mark.cli
@pytest.mark.parametrize("case", ["no_sbatch", "no_such_partition"])
def test_a_cluster_that_cannot_take_the_sweep_is_refused_in_one_line(case, slurm, tracking_server, tmp_path):
    url, _ = tracking_server
    args = ["-m", *SLURM, "data=synthetic", "model=logreg", "trainer.epochs=1", "seed=0,1",
            f"tracking.uri={url}", f"tracking.experiment=slurm_{case}"]
    env_extra = {}
    if case == "no_sbatch":  # only the venv's programs: SLURM's are not installed here
        env_extra["PATH"] = str(Path(sys.executable).parent)
        expected = ("needs SLURM's `sbatch` on the PATH", "hydra/launcher=local")
    else:
        args.append("hydra.launcher.partition=gpu")
        expected = ("hydra.launcher.partition=gpu is not a partition of this cluster",
                    "set hydra.launcher.partition to one of: debug")
    res = run_cli(args, tmp_path, timeout=120, env_extra=env_extra)
    assert res.returncode != 0, _ok(res)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and all(part in lines[0] for part in expected), _ok(res)
    assert "Traceback" not in res.stdout + res.stderr
    assert _runs(url, f"slurm_{case}") == []  # refused before any run, parent or job, existed
