"""What the sweep tests through the CLI share: a tiny sweep's overrides and reads of its store.

Plain functions, imported by test_sweep_failures.py, test_sweep_launchers.py and test_sweep_optuna_cli.py."""

from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient

TINY = ["data=synthetic", "data.n_train=500", "data.n_test=100", "data.val_size=50", "model=logreg",
        "tracking.misclassified_grid=false", "tracking.checkpoint=false",
        # The test-set figures take seconds a job and change no config_hash; the sweeps here test jobs.
        "diagnostics.embedding=false", "diagnostics.tsne=false", "diagnostics.pr_curves=false",
        "diagnostics.confusion=false"]


def _client(home: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{home}/runs/mlflow.db")


def _all_runs(home: Path) -> list:
    client = _client(home)
    experiment = client.get_experiment_by_name("cifar_sweep")
    return client.search_runs([experiment.experiment_id], max_results=1000) if experiment else []


def _parents(runs) -> list:
    return sorted((r for r in runs if r.data.tags.get("sweep_parent") == "true"), key=lambda r: r.info.start_time)


def _children(runs, parent) -> list:
    return sorted((r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id),
                  key=lambda r: int(r.data.tags["job_num"]))


def _ok(res) -> str:
    return f"exit {res.returncode}\n--- stdout\n{res.stdout[-4000:]}\n--- stderr\n{res.stderr[-4000:]}"
