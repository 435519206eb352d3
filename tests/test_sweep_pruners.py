"""Optuna's successive halving and Hyperband as a sweep's pruners (`sweep.pruning.pruner`): decided
by Optuna from the jobs' real val_acc per epoch, kept in a journal file in the sweep folder; a pruned
run says so in its tags, the parent counts them, and a relaunch skips them unless asked."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from helpers import run_cli
from sweep_helpers import TINY, _all_runs, _children, _ok, _parents


def _settings(pruner="halving", **kw):
    base = dict(pruner=pruner, enabled=False, after_epoch=1, min_siblings=2, min_resource=1, reduction_factor=2,
                min_early_stopping_rate=0)
    return SimpleNamespace(**{**base, **kw})


def _job(journal, run_id, accs, epochs=4, settings=None):
    """One job's epochs through the hook's pruner; the epoch it was pruned at, or None."""
    from cifar_sweep.sweeps.prune_hook import OptunaPruner

    pruner = OptunaPruner(str(journal), run_id, "halving", settings or _settings(), epochs)
    for epoch, acc in enumerate(accs):
        if epoch + 1 == epochs:
            pruner.finished(epoch, acc)
        elif pruner.should_stop(epoch, acc):
            return epoch, pruner
    return None, pruner


def test_halving_prunes_a_job_below_the_rung_of_the_jobs_before_it(tmp_path):
    import optuna

    journal = tmp_path / "pruning.journal"
    assert _job(journal, "a", [0.1, 0.5, 0.6, 0.7])[0] is None  # the first job has no competitor
    at, pruner = _job(journal, "b", [0.1, 0.3, 0.9, 0.9])  # rung 0 (epoch 1): 0.3 is not the top half of 0.5, 0.3
    assert at == 1 and "top 1/2" in pruner.reason and pruner.tags["pruned_by"] == "halving"
    assert _job(journal, "c", [0.1, 0.6, 0.65, 0.7])[0] is None  # best at rung 0 and at rung 1 (epoch 2)
    assert _job(journal, "d", [0.1, 0.62, 0.4, 0.9])[0] == 2  # promoted at rung 0, stopped at rung 1

    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(study_name="pruning", storage=JournalStorage(JournalFileBackend(str(journal))))
    states = {t.user_attrs["run_id"]: t.state.name for t in study.trials}
    assert states == {"a": "COMPLETE", "b": "PRUNED", "c": "COMPLETE", "d": "PRUNED"}
    assert study.trials[1].intermediate_values == {0: 0.1, 1: 0.3}  # the real values Optuna decided from


def test_a_resumed_run_continues_its_own_trial(tmp_path):
    from cifar_sweep.sweeps.prune_hook import OptunaPruner

    journal = str(tmp_path / "pruning.journal")
    first = OptunaPruner(journal, "r1", "halving", _settings(), 4)
    assert not first.should_stop(0, 0.2)  # the process is killed here
    again = OptunaPruner(journal, "r1", "halving", _settings(), 4)
    assert not again.should_stop(1, 0.3)
    assert first._trial.number == again._trial.number == 0
    assert again._study.trials[0].intermediate_values == {0: 0.2, 1: 0.3}


def test_the_pruner_setting_picks_the_rule():
    import optuna

    from cifar_sweep.sweeps.pruning import MedianPruner
    from cifar_sweep.sweeps.prune_hook import make_pruner, optuna_pruner

    def pick(**kw):
        return make_pruner("/nonexistent", "sqlite:///x.db", "run", "sweep", _settings(**kw), 8)

    assert pick(pruner="none") is None
    assert isinstance(pick(pruner="none", enabled=True), MedianPruner)  # the older spelling of median
    assert isinstance(pick(pruner="median"), MedianPruner)
    assert pick(pruner="hyperband").kind == "hyperband"
    band = optuna_pruner("hyperband", _settings(reduction_factor=3), 9)
    assert isinstance(band, optuna.pruners.HyperbandPruner) and band._max_resource == 9
    halving = optuna_pruner("halving", _settings(min_resource=2, reduction_factor=3, min_early_stopping_rate=1), 9)
    assert (halving._min_resource, halving._reduction_factor, halving._min_early_stopping_rate) == (2, 3, 1)


@pytest.mark.parametrize("override, named", [
    ("sweep.pruning.pruner=halvng", "sweep.pruning.pruner='halvng' must be none, median, halving or hyperband"),
    ("sweep.pruning.reduction_factor=1", "sweep.pruning.reduction_factor=1 must be an integer >= 2"),
])
def test_bad_pruner_settings_are_refused_in_one_line(compose_cfg, override, named):
    from cifar_sweep.config.rules import ConfigError, validate

    with pytest.raises(ConfigError, match=re.escape(named)):
        validate(compose_cfg(["data=synthetic", override]))


# -- through the CLI -----------------------------------------------------------------------------

LRS = "optimizer.lr=0.3,1e-5,0.1,1e-4,0.03,1e-6"
HALVING = ["-m", *TINY, "trainer.epochs=4", LRS, "sweep.pruning.pruner=halving", "sweep.pruning.reduction_factor=2"]


@pytest.fixture(scope="module")
def halving_sweep(tmp_path_factory):
    home = tmp_path_factory.mktemp("halving")
    res = run_cli(HALVING, home)
    assert res.returncode == 0, _ok(res)
    return home, res


@pytest.mark.cli
def test_halving_sweep_tags_its_pruned_runs_and_the_parent_counts_them(halving_sweep):
    home, res = halving_sweep
    (parent,) = _parents(_all_runs(home))
    jobs = _children(_all_runs(home), parent)
    pruned = [r for r in jobs if r.data.tags.get("pruned") == "true"]
    assert len(jobs) == 6 and 1 <= len(pruned) < 6, _ok(res)
    for run in pruned:
        tags = run.data.tags
        assert run.info.status == "FINISHED" and tags["pruned_by"] == "halving"
        last = max(m.step for m in _client_history(home, run.info.run_id))
        assert int(tags["pruned_at_epoch"]) == last < 3  # stopped there: no epoch after it was trained
    assert parent.data.metrics["jobs_pruned"] == len(pruned)
    assert f"{len(pruned)} pruned" in res.stdout and "pruned: val_acc" in res.stdout + res.stderr


def _client_history(home, run_id):
    from sweep_helpers import _client

    return _client(home).get_metric_history(run_id, "val_acc")


@pytest.mark.cli
def test_a_relaunch_skips_the_pruned_jobs(halving_sweep):
    home, _ = halving_sweep
    res = run_cli(HALVING, home)
    assert res.returncode == 0, _ok(res)
    assert "nothing to run: each of the 6 jobs of this sweep already has a FINISHED run" in res.stdout, _ok(res)
    assert len(_parents(_all_runs(home))) == 1


@pytest.mark.cli
@pytest.mark.slow
def test_rerun_pruned_runs_only_the_pruned_jobs_again(halving_sweep):
    home, _ = halving_sweep
    before = _all_runs(home)
    pruned = {r.data.params["optimizer.lr"] for r in before if r.data.tags.get("pruned") == "true"}
    res = run_cli([*HALVING, "sweep.rerun_pruned=true"], home)
    assert res.returncode == 0, _ok(res)
    parent = _parents(_all_runs(home))[-1]
    rerun = [r for r in _children(_all_runs(home), parent)]
    assert {r.data.params["optimizer.lr"] for r in rerun} == pruned  # the others were skipped, no new run
    assert parent.data.metrics["jobs_skipped"] == 6 - len(pruned)


@pytest.mark.cli
def test_optuna_search_tells_its_study_which_trials_were_pruned(tmp_path):
    import optuna

    res = run_cli(["-m", *TINY, "trainer.epochs=4", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=6",
                   "hydra.sweeper.sampler.seed=0", "optimizer.lr=tag(log, interval(1e-6, 0.3))",
                   "sweep.pruning.pruner=halving", "sweep.pruning.reduction_factor=2"], tmp_path)
    assert res.returncode == 0, _ok(res)
    storage = f"sqlite:///{tmp_path}/runs/optuna.db"
    (name,) = optuna.get_all_study_names(storage)
    study = optuna.load_study(study_name=name, storage=storage)
    (parent,) = _parents(_all_runs(tmp_path))
    pruned_runs = [r for r in _children(_all_runs(tmp_path), parent) if r.data.tags.get("pruned") == "true"]
    pruned_trials = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert len(pruned_runs) == len(pruned_trials) >= 1 and parent.data.metrics["jobs_pruned"] == len(pruned_runs)
