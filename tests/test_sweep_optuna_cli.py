"""The Optuna search through the real CLI in subprocesses: refused before it runs, every trial failing,
and a study that persists and continues when the same search is launched again."""

from __future__ import annotations

import pytest

from helpers import run_cli
from sweep_helpers import TINY, _all_runs, _ok, _parents

pytestmark = pytest.mark.cli


@pytest.mark.parametrize("space, named", [
    ("optimizer.lrr=interval(0.01, 0.1)", "Could not override 'optimizer.lrr'"),  # a typo in the key
    ("model=glob(l*)", "model: unsupported sweep Glob"),
    ("model=logreg,nosuchmodel", "Could not find 'model/nosuchmodel'"),
])
def test_optuna_search_that_cannot_run_is_refused_naming_it(tmp_path, space, named):
    res = run_cli(["-m", *TINY, "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2", space], tmp_path)
    assert res.returncode == 1, _ok(res)
    assert "the sweep was refused, nothing was run" in res.stderr and named in res.stderr, _ok(res)
    assert "Traceback" not in res.stderr and not (tmp_path / "runs" / "mlflow.db").exists()


def test_optuna_search_whose_every_trial_fails_exits_non_zero(tmp_path):
    res = run_cli(["-m", *TINY, "trainer.epochs=1", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2",
                   "optimizer.lr=interval(0.01, 0.1)", "data.classes=[cat,bogus]"], tmp_path)
    assert res.returncode == 1, _ok(res)
    assert "2 jobs: 2 failed" in res.stdout and "2 of 2 jobs failed" in res.stderr, _ok(res)
    (parent,) = _parents(_all_runs(tmp_path))
    assert parent.info.status == "FAILED" and parent.data.metrics["jobs_failed"] == 2


def test_optuna_search_persists_and_continues(tmp_path):
    import optuna

    search = ["-m", *TINY, "trainer.epochs=1", "hydra/sweeper=optuna", "hydra.sweeper.sampler.seed=0",
              "optimizer.lr=tag(log, interval(1e-4, 1e-1))", "model=logreg,cnn_simple"]
    res = run_cli([*search, "hydra.sweeper.n_trials=6"], tmp_path)
    assert res.returncode == 0, _ok(res)
    storage = f"sqlite:///{tmp_path}/runs/optuna.db"
    (name,) = optuna.get_all_study_names(storage)
    assert name.startswith("cifar_sweep-") and f"optuna study {name!r}" in res.stdout  # named by the search
    study = optuna.load_study(study_name=name, storage=storage)
    assert len(study.trials) == 6 and study.best_value > 0.2
    assert set(study.trials[0].params) == {"optimizer.lr", "model"}

    res = run_cli([*search, "hydra.sweeper.n_trials=3"], tmp_path)
    assert res.returncode == 0, _ok(res)
    assert "continuing it, the same search: 6 trials so far, 3 more" in res.stdout, _ok(res)
    study = optuna.load_study(study_name=name, storage=storage)
    assert len(study.trials) == 9
    runs = _all_runs(tmp_path)
    parents = _parents(runs)
    assert len(parents) == 2 and all(p.info.status == "FINISHED" for p in parents)
    trained = [r for r in runs if "config_hash" in r.data.tags]
    skipped = sum(int(p.data.metrics.get("jobs_skipped", 0)) for p in parents)
    assert len(trained) + skipped == 9  # a trial repeating a finished config is answered from MLflow
