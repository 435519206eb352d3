"""A sweep against a real MLflow tracking server on PostgreSQL, 2 jobs at a time with the joblib launcher,
and the same server with MLflow's login on, as docs/scaling.md starts it.

The PostgreSQL cluster and the servers come from tests/tracking_server_fixtures.py (`postgres`,
`tracking_server`, `auth_tracking_server`): loopback only, free ports, always stopped.
"""

from __future__ import annotations

import csv
import io
import os
import subprocess
import time
from pathlib import Path

import pytest
from helpers import REPO, run_cli
from mlflow.tracking import MlflowClient

from cifar_sweep.commands.ui import free_port

pytestmark = [pytest.mark.slow, pytest.mark.cli]  # two cold servers, 5 training jobs, the leaderboard: about 2 minutes

EPOCH_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time_s", "images_per_s")
ARTIFACTS = ("config.yaml", "epochs.jsonl", "model_summary.txt", "misclassified.csv", "checkpoint/last.pt")
SEEDS = (0, 1, 2, 3)
EPOCHS = 2


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


# -- the server with login (scripts/tracking_server.sh --basic-auth) ---------------------------------

LEADERBOARD = "cifar_sweep.commands.leaderboard"
TINY_RUN = ["data=synthetic", "model=logreg", "trainer.epochs=1", "diagnostics.embedding=false"]


@pytest.mark.parametrize("password", [None, "short-pass", "password1234"])
def test_login_server_needs_a_good_admin_password(password, tmp_path):
    """MLflow (3.16.1+) has no default admin password: the script says so at once, before touching the database."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_AUTH_ADMIN_PASSWORD"}
    env |= {"MLFLOW_FLASK_SERVER_SECRET_KEY": "k"} | ({"MLFLOW_AUTH_ADMIN_PASSWORD": password} if password else {})
    res = subprocess.run(["bash", str(REPO / "scripts" / "tracking_server.sh"), "--basic-auth", "--backend-store-uri",
                          f"postgresql://mlflow@127.0.0.1:{free_port()}/mlflow"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2, res.stderr
    (line,) = res.stderr.strip().splitlines()
    assert "MLFLOW_AUTH_ADMIN_PASSWORD" in line and "12 or more characters, not password1234" in line, line


def _runs_of(server, experiment: str) -> list:
    client = MlflowClient(server.url)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


@pytest.fixture(scope="module")
def logged_in_run(auth_tracking_server, tmp_path_factory):
    """One run logged through the login with the admin's credentials; (run, home)."""
    server = auth_tracking_server
    home = tmp_path_factory.mktemp("auth_home")
    res = run_cli([*TINY_RUN, f"tracking.uri={server.url}"], home, timeout=300, env_extra=server.credentials)
    assert res.returncode == 0, res.stderr[-3000:]
    os.environ.update(server.credentials)  # this process reads the server as a client too
    try:
        (run,) = _runs_of(server, "cifar_sweep")
    finally:
        for key in server.credentials:
            os.environ.pop(key)
    return run, home


def test_a_client_with_credentials_logs_a_run(logged_in_run):
    run, _ = logged_in_run
    assert run.info.status == "FINISHED" and 0.0 <= run.data.metrics["best_val_acc"] <= 1.0


@pytest.mark.parametrize("who", ["no_credentials", "wrong_password"])
def test_a_client_the_server_refuses_gets_one_line_and_leaves_no_run(who, auth_tracking_server, logged_in_run,
                                                                      tmp_path):
    server = auth_tracking_server
    env = {"MLFLOW_TRACKING_USERNAME": "", "MLFLOW_TRACKING_PASSWORD": ""}
    if who == "wrong_password":
        env = {**server.credentials, "MLFLOW_TRACKING_PASSWORD": "not-the-password"}
    expected = f"the tracking server {server.url} refused the login (HTTP 401"
    fix = "export MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
    for args, module in (([*TINY_RUN, f"tracking.uri={server.url}"], "cifar_sweep.train"),
                         (["-m", *TINY_RUN, "seed=0,1", f"tracking.uri={server.url}"], "cifar_sweep.train"),
                         (["--tracking-uri", server.url], LEADERBOARD)):
        started = time.monotonic()
        res = run_cli(args, tmp_path, timeout=120, env_extra=env, module=module)
        assert res.returncode != 0 and time.monotonic() - started < 60, res.stdout[-2000:]
        lines = [line for line in res.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and expected in lines[0] and fix in lines[0], (args, res.stderr[-3000:])
    # Nothing was created: still the one run the admin logged, and it is not left RUNNING.
    os.environ.update(server.credentials)
    try:
        runs = _runs_of(server, "cifar_sweep")
    finally:
        for key in server.credentials:
            os.environ.pop(key)
    assert [r.info.run_id for r in runs] == [logged_in_run[0].info.run_id]


def test_leaderboard_reads_through_the_login(auth_tracking_server, logged_in_run):
    server = auth_tracking_server
    run, home = logged_in_run
    res = run_cli(["--tracking-uri", server.url, "--format", "csv"], home, timeout=300, module=LEADERBOARD,
                  env_extra=server.credentials)
    assert res.returncode == 0, res.stderr[-3000:]
    (row,) = list(csv.DictReader(io.StringIO(res.stdout)))
    assert row["run_ids"] == run.info.run_id, res.stdout


def test_a_server_that_is_down_is_named_in_one_line_in_seconds(tmp_path):
    """Not MLflow's minutes of retries: the commands look at /health first."""
    url = f"http://127.0.0.1:{free_port()}"
    for args, module in ((["--tracking-uri", url], LEADERBOARD),
                         (["-m", *TINY_RUN, "seed=0,1", f"tracking.uri={url}"], "cifar_sweep.train")):
        started = time.monotonic()
        res = run_cli(args, tmp_path, timeout=120, module=module)
        took = time.monotonic() - started
        lines = [line for line in res.stderr.splitlines() if line.strip()]
        assert res.returncode != 0 and len(lines) == 1, res.stderr[-3000:]
        assert f"tracking server {url} is unreachable" in lines[0] and "scripts/tracking_server.sh" in lines[0]
        assert took < 30, f"{module} took {took:.0f} s to give up"
