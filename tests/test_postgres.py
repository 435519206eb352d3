"""A sweep against a real MLflow tracking server on PostgreSQL, 2 jobs at a time with the joblib launcher.

A throwaway PostgreSQL cluster is made in a temp dir (initdb/pg_ctl of Debian's `postgresql`
package, as user `postgres` when the tests run as root: initdb refuses root), listening on loopback
only, on a free port; `scripts/tracking_server.sh` (the documented command) creates the database
and starts `mlflow server` with proxied artifacts. Cluster and server are always stopped in the
fixtures' teardown.
"""

from __future__ import annotations

import csv
import glob
import io
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from helpers import REPO, run_cli
from mlflow.tracking import MlflowClient

from cifar_sweep.commands.ui import free_port, stop_group, wait_until_healthy

pytestmark = [pytest.mark.slow, pytest.mark.cli]  # a cold server, 4 training jobs and the leaderboard: about 75 s on 2 cores

EPOCH_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time_s", "images_per_s")
ARTIFACTS = ("config.yaml", "epochs.jsonl", "model_summary.txt", "misclassified.csv", "checkpoint/last.pt")
SEEDS = (0, 1, 2, 3)
EPOCHS = 2


def _pg_bin() -> Path | None:
    """The newest Debian PostgreSQL bin dir (/usr/lib/postgresql/<major>/bin), else initdb on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(re.findall(r"\d+", p)[0]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def _as_db_user() -> list[str] | None:
    """Prefix that runs a PostgreSQL program as a non-root user ([] if we are not root; None if impossible)."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return None
    runuser = shutil.which("runuser")
    return [runuser, "-u", "postgres", "--"] if runuser else ["su", "postgres", "-s", "/bin/sh", "-c"]


def _run(prefix: list[str], cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    if prefix and prefix[0] == "su":  # su takes one shell command line
        cmd = [shlex.join(cmd)]
    return subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=timeout, cwd="/")


@pytest.fixture(scope="module")
def postgres():
    """A private PostgreSQL cluster on 127.0.0.1:<free port>; yields its superuser URI (no database yet)."""
    bin_dir, prefix = _pg_bin(), _as_db_user()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql; scripts/install.sh test does it)")
    if prefix is None:
        pytest.skip("running as root and there is no `postgres` user to run initdb as (initdb refuses root)")
    # Not under pytest's tmp dir: its parents are private to root, and the cluster runs as `postgres`.
    top = Path(tempfile.mkdtemp(prefix="cifar_sweep_pg_"))
    data, sock, log = top / "data", top / "sock", top / "server.log"
    sock.mkdir()
    if prefix:
        shutil.chown(top, "postgres", "postgres")
        shutil.chown(sock, "postgres", "postgres")
    port = free_port()
    started = False
    try:
        res = _run(prefix, [str(bin_dir / "initdb"), "-D", str(data), "-U", "mlflow", "--auth=trust",
                            "--encoding=UTF8", "--locale=C", "--no-sync"])
        assert res.returncode == 0, f"initdb failed:\n{res.stdout}\n{res.stderr}"
        opts = (f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off")
        res = _run(prefix, [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", opts, "-w", "-t", "60",
                            "start"])
        started = True
        log_text = log.read_text() if log.exists() else ""
        assert res.returncode == 0, f"pg_ctl start failed:\n{res.stdout}\n{res.stderr}\n{log_text}"
        yield f"postgresql://mlflow@127.0.0.1:{port}/mlflow"
    finally:
        if started:
            _run(prefix, [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "60", "stop"])
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(scope="module")
def tracking_server(postgres, tmp_path_factory):
    """scripts/tracking_server.sh on the cluster; yields (http URI, artifacts dir). Always stopped."""
    port = free_port()
    work = tmp_path_factory.mktemp("tracking_server")
    artifacts, log_path = work / "artifacts", work / "server.log"
    env = {**os.environ, "PYTHON": sys.executable}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            ["bash", str(REPO / "scripts" / "tracking_server.sh"), "--backend-store-uri", postgres,
             "--artifacts-destination", str(artifacts), "--port", str(port), "--workers", "2"],
            cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        ready = wait_until_healthy(url, proc, timeout=300)
        assert ready, f"tracking server not ready (exit {proc.poll()}):\n{log_path.read_text()[-4000:]}"
        yield url, artifacts
    finally:
        stop_group(proc)  # the script execs `mlflow server`: its group holds uvicorn and the workers


@pytest.fixture(scope="module")
def sweep(tracking_server, tmp_path_factory):
    """The issue's sweep, run once: 4 jobs, 2 at a time, against the server."""
    url, artifacts = tracking_server
    home = tmp_path_factory.mktemp("pg_home")
    args = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "data=synthetic", f"trainer.epochs={EPOCHS}",
            "model=logreg", f"seed={','.join(map(str, SEEDS))}", f"tracking.uri={url}"]
    started = time.monotonic()
    res = run_cli(args, home, timeout=1200)
    elapsed = time.monotonic() - started
    assert res.returncode == 0, f"sweep failed:\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}"
    print(f"sweep of {len(SEEDS)} jobs against {url}: {elapsed:.0f} s")
    client = MlflowClient(url)
    exp = client.get_experiment_by_name("cifar_sweep")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return client, exp, runs, home, artifacts


def _jobs(runs):
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId")]


def test_every_job_finished_as_one_run(sweep):
    _, _, runs, _, _ = sweep
    jobs = _jobs(runs)
    assert len(jobs) == len(SEEDS), [(r.info.run_name, r.info.status) for r in runs]
    assert [r.info.status for r in jobs] == ["FINISHED"] * len(SEEDS)
    assert sorted(int(r.data.params["seed"]) for r in jobs) == list(SEEDS)
    parents = {r.data.tags["mlflow.parentRunId"] for r in jobs}
    assert len(parents) == 1  # one sweep, one parent run
    parent = next(r for r in runs if r.info.run_id in parents)
    assert parent.info.status == "FINISHED"


def test_every_epoch_metric_arrived(sweep):
    client, _, runs, _, _ = sweep
    for run in _jobs(runs):
        for key in EPOCH_METRICS:
            history = client.get_metric_history(run.info.run_id, key)
            assert sorted(m.step for m in history) == list(range(EPOCHS)), (run.info.run_name, key, history)
        assert 0.0 <= run.data.metrics["best_val_acc"] <= 1.0
        assert "test_acc" in run.data.metrics


def _artifact_files(client, run_id: str, path: str | None = None) -> list[str]:
    files = []
    for item in client.list_artifacts(run_id, path):
        files += _artifact_files(client, run_id, item.path) if item.is_dir else [item.path]
    return files


def test_every_artifact_arrived_through_the_server(sweep):
    """Artifacts went over HTTP (mlflow-artifacts:/) into the server's --artifacts-destination."""
    client, _, runs, _, artifacts = sweep
    for run in _jobs(runs):
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), run.info.artifact_uri
        files = _artifact_files(client, run.info.run_id)
        missing = [name for name in ARTIFACTS if name not in files]
        assert not missing, (run.info.run_name, missing, files)
        on_disk = list(artifacts.rglob(f"{run.info.run_id}/artifacts/checkpoint/last.pt"))
        assert len(on_disk) == 1 and on_disk[0].stat().st_size > 0
        lines = client.download_artifacts(run.info.run_id, "epochs.jsonl")
        assert len(Path(lines).read_text().splitlines()) == EPOCHS


def test_leaderboard_reads_the_server(sweep, tracking_server):
    _, _, runs, home, _ = sweep
    url, _ = tracking_server
    res = run_cli(["--tracking-uri", url, "--no-fold", "--format", "csv"], home, timeout=300,
                  module="cifar_sweep.commands.leaderboard")
    assert res.returncode == 0, res.stderr[-3000:]
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert sorted(row["run_ids"] for row in rows) == sorted(r.info.run_id for r in _jobs(runs)), res.stdout
    assert all(row["n"] == "1" and 0.0 <= float(row["best_val_acc"]) <= 1.0 for row in rows), res.stdout
    # Folded (the default): the 4 seeds of one config are one row with n = 4.
    folded = run_cli(["--tracking-uri", url, "--format", "csv"], home, timeout=300, module="cifar_sweep.commands.leaderboard")
    assert folded.returncode == 0, folded.stderr[-3000:]
    (row,) = list(csv.DictReader(io.StringIO(folded.stdout)))
    assert row["n"] == str(len(SEEDS)), folded.stdout
    assert sorted(row["run_ids"].split(";")) == sorted(r.info.run_id for r in _jobs(runs)), folded.stdout
