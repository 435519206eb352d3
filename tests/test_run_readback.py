"""What a real sweep leaves in MLflow, read back through MlflowClient as the UI and other tools read it.

One module-scoped sweep of 2 tiny jobs on data=synthetic (the CLI in a subprocess), then the same
command again (a relaunch with nothing left to run: it makes no parent run). Checked: the
experiment's kind, each job's dataset input, its image series with one step per epoch, per-class
metrics under their prefix, exact fractions, system metrics, names that say the data, the parent's
own metric names, and that the leaderboard answers for the sweep's parent run.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from fractions import Fraction

import pytest
from helpers import run_cli
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.cli  # every test reads the sweep the CLI ran, or runs a command itself
EPOCHS = 2
SWEEP = ["-m", "data=synthetic", "model=logreg", f"trainer.epochs={EPOCHS}", "seed=0,1",
         "diagnostics.embedding=false", "diagnostics.pr_curves=false", "tracking.system_metrics_s=0.5"]
N_VAL, N_TEST = 500, 500  # conf/data/synthetic.yaml: val_size 500 of n_train 2000, n_test 500
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    home = tmp_path_factory.mktemp("readback_home")
    first = run_cli(SWEEP, home, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    again = run_cli(SWEEP, home, timeout=600)  # the relaunch: both jobs FINISHED already
    assert again.returncode == 0, again.stderr[-3000:]
    assert "nothing to run: each of the 2 jobs of this sweep already has a FINISHED run" in again.stdout
    uri = f"sqlite:///{home / 'runs' / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("cifar_sweep")
    runs = client.search_runs([exp.experiment_id])
    parents = sorted((r for r in runs if r.data.tags.get("sweep_parent") == "true"), key=lambda r: r.info.start_time)
    jobs = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(parents) == 1 and len(jobs) == 2, [r.info.run_name for r in runs]  # no parent for the relaunch
    return home, uri, client, exp, parents, jobs


def test_experiment_is_a_model_training_one(swept):
    _, _, _, exp, _, _ = swept
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"


def test_each_job_has_its_dataset_input(swept):
    _, _, _, _, _, jobs = swept
    for job in jobs:
        (found,) = job.inputs.dataset_inputs
        assert found.dataset.name == "synthetic" == job.data.tags["dataset"]
        assert found.dataset.digest == job.data.tags["dataset_digest"] and len(found.dataset.digest) == 16
        profile = json.loads(found.dataset.profile)
        assert (profile["train"], profile["val"], profile["test"], profile["classes"]) == (1500, N_VAL, N_TEST, 10)
        assert {t.key: t.value for t in found.tags} == {"mlflow.data.context": "training"}


def test_run_names_say_the_data(swept):
    _, _, _, _, _, jobs = swept
    names = sorted(j.info.run_name for j in jobs)
    # A sweep's names lead with what differs between its jobs, then the data, model and optimizer.
    assert names == ["seed=0 [synthetic] logreg adam epochs=2", "seed=1 [synthetic] logreg adam epochs=2"], names
    assert not any("tracking." in n for n in names)  # where it is stored says nothing about what it trains


def test_misclassified_grids_are_an_image_series_by_epoch(swept):
    _, _, client, _, _, jobs = swept
    for job in jobs:
        names = [f.path for f in client.list_artifacts(job.info.run_id, "images")]
        steps = sorted(int(m.group(1)) for n in names
                       if (m := re.match(r"images/misclassified\+step\+(\d+)\+timestamp\+\d+\+[0-9a-f-]+\.png$", n)))
        previews = [n for n in names if n.endswith("+compressed.webp")]
        assert steps == list(range(EPOCHS)) and len(previews) == EPOCHS
        assert job.data.tags["mlflow.loggedImages"] == "True"


def test_per_class_metrics_share_a_prefix(swept):
    _, _, _, _, _, jobs = swept
    for job in jobs:
        metrics = job.data.metrics
        assert {k for k in metrics if k.startswith("class_acc/")} == {f"class_acc/{c}" for c in CLASSES}
        assert not [k for k in metrics if k.startswith("test_acc_")]  # the old, ungrouped names


def test_accuracies_are_exact_fractions(swept):
    _, _, client, _, _, jobs = swept
    for job in jobs:
        m = job.data.metrics
        for value, n in [(m["best_val_acc"], N_VAL), (m["test_acc"], N_TEST)] + [
                (h.value, N_VAL) for h in client.get_metric_history(job.info.run_id, "val_acc")]:
            count = round(value * n)
            assert value == count / n, (value, n)  # 0.578, never 0.57800000905...
            assert repr(value) == repr(float(Fraction(count, n)))


def test_system_metrics_were_sampled(swept):
    _, _, client, _, _, jobs = swept
    for job in jobs:
        history = client.get_metric_history(job.info.run_id, "system/cpu_utilization_percentage")
        assert len(history) >= 1 and all(0 <= h.value <= 100 for h in history)
        assert "system/system_memory_usage_megabytes" in job.data.metrics


def test_parents_keep_their_summary_under_names_of_their_own(swept):
    _, _, _, _, parents, jobs = swept
    (first,) = parents
    assert not {"best_val_acc", "test_acc", "val_acc"} & set(first.data.metrics)
    assert first.data.metrics["jobs_finished"] == 2 and first.data.metrics["jobs_total"] == 2
    assert first.data.metrics["sweep_best_val_acc"] == max(j.data.metrics["best_val_acc"] for j in jobs)
    assert {j.data.tags["mlflow.parentRunId"] for j in jobs} == {first.info.run_id}


def test_leaderboard_answers_for_the_parent(swept):
    home, uri, _, _, parents, jobs = swept
    (parent,) = parents
    res = subprocess.run([sys.executable, "-m", "cifar_sweep.commands.leaderboard", "--tracking-uri", uri,
                          "--sweep", parent.info.run_id[:8], "--format", "csv", "--no-fold"],
                         capture_output=True, text=True, timeout=120, cwd=home)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith("data,rank,run_name") and len(lines) == 1 + len(jobs)
    assert {line.rsplit(",", 1)[1] for line in lines[1:]} == {j.info.run_id for j in jobs}


def test_help_names_this_project_and_its_commands(tmp_path):
    res = run_cli(["--help"], tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("cifar-sweep: train one network") and "powered by Hydra" not in res.stdout
    for command in ("cifar-leaderboard", "cifar-report", "cifar-ui", "cifar-compare-devices", "cifar-still-wrong",
                    "cifar-featuremaps", "cifar-sweep-reap"):
        assert f"\n  {command} " in res.stdout, command
    assert "\ndata: cifar10, cifar2, folder, synthetic\n" in res.stdout  # the groups, read from conf/
