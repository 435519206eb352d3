"""The Optuna sweeper in process, with a stand-in launcher: failed trials told and gone past, the grid
sampler, what it refuses, the study named by its search, a sweep whose every trial fails."""

from __future__ import annotations

import math

import pytest


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


# -- the optuna sweeper's edges, in process with a stand-in launcher --------------------------------


class _Launcher:
    """Runs each trial's overrides through `objective`; a raised error is the job's failure."""

    def __init__(self, objective):
        self.objective, self.batches, self.job_nums = objective, [], []

    def launch(self, batch, initial_job_idx):
        from hydra.core.utils import JobReturn, JobStatus

        self.batches.append([list(o) for o in batch])
        self.job_nums += range(initial_job_idx, initial_job_idx + len(batch))
        out = []
        for overrides in batch:
            ret = JobReturn(overrides=overrides)
            values = dict(o.split("=", 1) for o in overrides)
            try:
                ret.status, ret.return_value = JobStatus.COMPLETED, self.objective(values)
            except Exception as err:  # noqa: BLE001
                ret.status, ret.return_value = JobStatus.FAILED, err
            out.append(ret)
        return out


def _sweeper(tmp_path, objective, callbacks=None, **kwargs):
    from omegaconf import OmegaConf

    from hydra_plugins.cifar_sweep_sweeper.sweepers import OptunaSweeper

    kwargs = {"storage": f"sqlite:///{tmp_path}/optuna.db", "n_trials": 4, **kwargs}
    sweeper = OptunaSweeper(**kwargs)
    sweeper.config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "sweep")},
                                                 "callbacks": callbacks or {}}})
    sweeper.launcher = _Launcher(objective)
    sweeper.hydra_context = type("Ctx", (), {"config_loader": None})()
    sweeper.validate_batch_is_legal = lambda batch: None
    return sweeper


def test_optuna_grid_sampler_completes_its_grid_and_stops_cleanly(tmp_path, caplog):
    import optuna

    grid = {"_target_": "optuna.samplers.GridSampler", "seed": 0}
    sweeper = _sweeper(tmp_path, lambda v: int(v["x"]) + (v["y"] == "b"), sampler=grid, n_trials=25, n_jobs=3,
                       study_name="grid")
    with caplog.at_level("INFO"):
        sweeper.sweep(["x=range(5,0,-1)", "y=a,b"])  # a descending range: the values 5, 4, 3, 2, 1
    study = optuna.load_study(study_name="grid", storage=sweeper.storage)
    assert len(study.trials) == 10 and all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert {(t.params["x"], t.params["y"]) for t in study.trials} == {(x, y) for x in range(1, 6) for y in "ab"}
    assert sum(len(b) for b in sweeper.launcher.batches) == 10 and study.best_value == 6
    assert "the search is complete" in caplog.text

    again = _sweeper(tmp_path, lambda v: 0.0, sampler=grid, n_trials=5, study_name="grid")
    again.sweep(["x=range(5,0,-1)", "y=a,b"])  # the grid is done: nothing more to launch
    assert again.launcher.batches == []
    assert len(optuna.load_study(study_name="grid", storage=sweeper.storage).trials) == 10


@pytest.mark.parametrize("sweep, message", [
    ("model=glob(l*)", "model: unsupported sweep Glob"),
    ("x=range(3,3)", "x: range(3, 3, 1) is empty"),
])
def test_optuna_refuses_what_it_cannot_search_in_one_line(tmp_path, sweep, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _sweeper(tmp_path, lambda v: 1.0).sweep([sweep])


def test_optuna_study_is_named_by_its_search(tmp_path, caplog):
    import optuna

    def run(*arguments, **kwargs):
        sweeper = _sweeper(tmp_path, lambda v: float(v["lr"]), study_name="exp-{search}", n_trials=2, **kwargs)
        sweeper.sweep(list(arguments))

    with caplog.at_level("INFO"):
        run("lr=interval(0.0, 1.0)", "data=synthetic")
        run("lr=interval(0.0, 1.0)", "data=synthetic", "sweep.force=true")  # how it runs, not what: same study
        run("lr=interval(0.0, 1.0)", "data=cifar10")  # other fixed overrides: another study
    names = optuna.get_all_study_names(f"sqlite:///{tmp_path}/optuna.db")
    assert len(names) == 2 and all(n.startswith("exp-") for n in names)
    assert caplog.text.count("a new study") == 2 and "continuing it, the same search: 2 trials so far" in caplog.text
    trials = {n: len(optuna.load_study(study_name=n, storage=f"sqlite:///{tmp_path}/optuna.db").trials) for n in names}
    assert sorted(trials.values()) == [2, 4]
    # A fixed name is checked against the search that made the study, never continued by another.
    _sweeper(tmp_path, lambda v: 1.0, study_name="fixed", n_trials=1).sweep(["lr=interval(0.0, 1.0)"])
    with pytest.raises(ValueError, match=r"'fixed' .* was made by another search \(differs: .*lr=interval\(0.0, 2.0\)"):
        _sweeper(tmp_path, lambda v: 1.0, study_name="fixed", n_trials=1).sweep(["lr=interval(0.0, 2.0)"])
    # The sweep's check before it starts finds the same conflict without creating anything.
    from cifar_sweep.sweeps.optuna_search import stored_search_conflict
    from cifar_sweep.sweeps.search_space import parse_search

    storage = f"sqlite:///{tmp_path}/optuna.db"
    other, same = (parse_search({}, [f"lr=interval(0.0, {end})"], None) for end in ("2.0", "1.0"))
    assert "was made by another search" in stored_search_conflict("fixed", storage, other)
    assert stored_search_conflict("fixed", storage, same) is None
    assert stored_search_conflict("fixed", f"sqlite:///{tmp_path}/none.db", other) is None
    assert not (tmp_path / "none.db").exists()


def test_optuna_sweep_where_every_trial_fails_is_a_failure(tmp_path):
    def diverge(values):
        raise FloatingPointError("loss is NaN")

    with pytest.raises(FloatingPointError, match="loss is NaN"):  # without cifar_sweep's callback: raised
        _sweeper(tmp_path, diverge, study_name="a").sweep(["lr=interval(0.0, 1.0)"])

    # With it, a trial refused before it runs is a FAILED job of the summary (which exits non-zero).
    from cifar_sweep.sweeps.records import read_job_records

    callbacks = {"cifar_sweep": {"_target_": "cifar_sweep.sweeps.callback.SweepCallback"}}
    sweeper = _sweeper(tmp_path, lambda v: 1.0, callbacks=callbacks, study_name="b", n_trials=6,
                       sampler={"_target_": "optuna.samplers.RandomSampler", "seed": 0})

    def refuse_odd(batch):
        if int(batch[0][-1].split("=")[1]) % 2:
            raise ValueError("Could not override 'n'.\nKey 'n' is not in struct")

    sweeper.validate_batch_is_legal = refuse_odd
    sweeper.sweep(["n=range(0,100)"])
    records = read_job_records(tmp_path / "sweep")
    launched = sum(len(b) for b in sweeper.launcher.batches)
    assert len(records) == 6 - launched and 0 < launched < 6  # the seeded draws hold odd and even numbers
    assert sorted([*records, *sweeper.launcher.job_nums]) == list(range(6))  # one number each, no clash
    assert all(r.status == "FAILED" and r.error.startswith("cannot be composed: Could not override 'n'. Key")
               and r.overrides for r in records.values())
