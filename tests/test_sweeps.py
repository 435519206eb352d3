"""Sweeps that survive, through the real CLI in subprocesses: one parent run per sweep,
failure isolation with a summary and a non-zero exit, resume, parallel jobs on one SQLite store,
the resumable Optuna search, the dry run, submitit. Every sweep is tiny: synthetic data, few epochs."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import run_cli

TINY = ["data=synthetic", "data.n_train=500", "data.n_test=100", "data.val_size=50", "model=logreg",
        "tracking.misclassified_grid=false", "tracking.checkpoint=false"]


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
        assert c.data.tags["config_hash"] and "data.classes=" in c.info.run_name
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


def test_parallel_jobs_share_one_fresh_sqlite_store(tmp_path):
    """4 jobs x 5 epochs, joblib 2 at a time, fresh store: every run and every metric point lands."""
    res = run_cli(["-m", *TINY, "trainer.epochs=5", "hydra/launcher=parallel", "seed=0,1,2,3"], tmp_path)
    assert res.returncode == 0, _ok(res)
    assert "database is locked" not in res.stdout + res.stderr
    runs = _all_runs(tmp_path)
    (parent,) = _parents(runs)
    children = _children(runs, parent)
    assert len(runs) == 5 and len(children) == 4
    assert all(r.info.status == "FINISHED" for r in runs)
    client = _client(tmp_path)
    for c in children:
        for key in ["train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time_s", "images_per_s"]:
            assert sorted(m.step for m in client.get_metric_history(c.info.run_id, key)) == [0, 1, 2, 3, 4], key
    assert {c.data.params["seed"] for c in children} == {"0", "1", "2", "3"}
    assert len({c.data.tags["config_hash"] for c in children}) == 1  # seeds are repeats of one config
    cores = len(os.sched_getaffinity(0))
    assert {c.data.tags["threads"] for c in children} == {str(max(1, cores // 2))}  # no oversubscription


def test_optuna_search_persists_and_continues(tmp_path):
    import optuna

    search = ["-m", *TINY, "trainer.epochs=1", "hydra/sweeper=optuna", "hydra.sweeper.sampler.seed=0",
              "optimizer.lr=tag(log, interval(1e-4, 1e-1))", "model=logreg,cnn_simple"]
    res = run_cli([*search, "hydra.sweeper.n_trials=6"], tmp_path)
    assert res.returncode == 0, _ok(res)
    storage = f"sqlite:///{tmp_path}/runs/optuna.db"
    study = optuna.load_study(study_name="cifar_sweep", storage=storage)
    assert len(study.trials) == 6 and study.best_value > 0.2
    assert set(study.trials[0].params) == {"optimizer.lr", "model"}

    res = run_cli([*search, "hydra.sweeper.n_trials=3"], tmp_path)
    assert res.returncode == 0, _ok(res)
    assert "6 trials so far, 3 more" in res.stdout, _ok(res)
    study = optuna.load_study(study_name="cifar_sweep", storage=storage)
    assert len(study.trials) == 9
    runs = _all_runs(tmp_path)
    parents = _parents(runs)
    assert len(parents) == 2 and all(p.info.status == "FINISHED" for p in parents)
    trained = [r for r in runs if "config_hash" in r.data.tags]
    skipped = sum(int(p.data.metrics.get("jobs_skipped", 0)) for p in parents)
    assert len(trained) + skipped == 9  # a trial repeating a finished config is answered from MLflow


@pytest.mark.slow
def test_submitit_local_launcher(tmp_path):
    res = run_cli(["-m", *TINY, "trainer.epochs=1", "trainer.threads=1", "hydra/launcher=submitit_local",
                   "hydra.launcher.timeout_min=10", "seed=0,1"], tmp_path, timeout=600)
    assert res.returncode == 0, _ok(res)
    runs = _all_runs(tmp_path)
    (parent,) = _parents(runs)
    children = _children(runs, parent)
    assert [c.info.status for c in children] == ["FINISHED", "FINISHED"]
    assert parent.info.status == "FINISHED"


# -- in-process pieces: no training ------------------------------------------------------------------


def test_median_pruner_compares_with_siblings_at_the_same_epoch(tmp_path):
    from mlflow.entities import Metric

    from cifar_sweep.sweeps.pruning import MedianPruner
    from cifar_sweep.tracking.run import ensure_experiment

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    experiment_id = ensure_experiment(uri, "prune")
    client = MlflowClient(uri)

    def run(sweep_id, accs):
        run_id = client.create_run(experiment_id, tags={"sweep_id": sweep_id}).info.run_id
        client.log_batch(run_id, metrics=[Metric("val_acc", a, 0, step) for step, a in enumerate(accs)])
        return run_id

    run("s1", [0.5, 0.6]), run("s1", [0.7, 0.8]), run("s1", [0.9]), run("other", [0.0, 0.0])
    me = run("s1", [])
    pruner = MedianPruner(uri, me, "s1", after_epoch=1, min_siblings=2)
    assert not pruner.should_stop(0, 0.1)  # before after_epoch
    assert pruner.should_stop(1, 0.65) and pruner.median == pytest.approx(0.7)  # median of 0.6, 0.8
    assert not pruner.should_stop(1, 0.75)
    assert not MedianPruner(uri, me, "s1", after_epoch=1, min_siblings=3).should_stop(1, 0.1)  # too few


def test_optuna_sweeper_tells_failed_trials_and_goes_on(tmp_path):
    from hydra.core.utils import JobReturn, JobStatus
    from omegaconf import OmegaConf

    from hydra_plugins.cifar_sweep_sweeper.sweepers import OptunaSweeper

    class Launcher:
        calls = 0

        def launch(self, batch, initial_job_idx):
            out = []
            for overrides in batch:
                Launcher.calls += 1
                ret = JobReturn(overrides=overrides)
                lr = float(next(o for o in overrides if o.startswith("lr=")).split("=")[1])
                if lr > 0.5:
                    ret.status, ret.return_value = JobStatus.FAILED, RuntimeError("diverged")
                else:
                    ret.status, ret.return_value = JobStatus.COMPLETED, 1 - lr
                out.append(ret)
            return out

    storage = f"sqlite:///{tmp_path}/optuna.db"
    sweeper = OptunaSweeper(study_name="t", storage=storage, n_trials=8, n_jobs=2,
                            sampler={"_target_": "optuna.samplers.RandomSampler", "seed": 0})
    sweeper.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "sweep")}}})
    sweeper.launcher = Launcher()
    sweeper.hydra_context = type("Ctx", (), {"config_loader": None})()
    sweeper.validate_batch_is_legal = lambda batch: None
    sweeper.sweep(["lr=interval(0.0, 1.0)", "fixed=1"])
    import optuna

    study = optuna.load_study(study_name="t", storage=storage)
    states = [t.state for t in study.trials]
    assert len(states) == 8 and Launcher.calls == 8
    assert optuna.trial.TrialState.FAIL in states and optuna.trial.TrialState.COMPLETE in states
    assert all(t.user_attrs["overrides"][0] == "fixed=1" for t in study.trials)
    assert not math.isnan(study.best_value)
