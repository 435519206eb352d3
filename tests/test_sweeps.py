"""Sweeps that survive, through the real CLI in subprocesses: one parent run per sweep,
failure isolation with a summary and a non-zero exit, resume, parallel jobs on one SQLite store,
the resumable Optuna search, the dry run, submitit. Every sweep is tiny: synthetic data, few epochs."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import run_cli

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
    from hydra_plugins.cifar_sweep_sweeper.sweepers import parse_search, stored_search_conflict

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
