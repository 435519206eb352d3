"""`cifar-report --sweep`: the sweep's parallel-coordinates chart and each swept parameter's fANOVA
importance (Optuna), over the sweep's finished, unpruned jobs, for a grid sweep as for any other."""

from __future__ import annotations

import base64
import io
import itertools
import re

import pandas as pd
import pytest

from cifar_sweep.analysis import importance

LRS = (1e-4, 1e-3, 1e-2, 1e-1)
BATCHES = (64, 256)


def _acc(lr: float, batch: int) -> float:
    """The learning rate decides (best at 1e-2); the batch size nudges it by half a point."""
    return {1e-4: 0.30, 1e-3: 0.50, 1e-2: 0.70, 1e-1: 0.40}[lr] + (0.005 if batch == 64 else 0.0)


def _frame(rows) -> pd.DataFrame:
    return pd.DataFrame([{"run_id": f"r{i}", "status": status, "params.optimizer.lr": str(lr),
                          "params.trainer.batch_size": str(batch), "params.model._target_": model,
                          "params.data.mean": "[0.49, 0.48, 0.45]", "params.seed": "0",
                          "metrics.best_val_acc": acc, "tags.pruned": pruned}
                         for i, (lr, batch, model, status, acc, pruned) in enumerate(rows)])


def test_swept_params_are_what_differs_among_finished_unpruned_jobs():
    rows = [(lr, b, "m.LogReg", "FINISHED", _acc(lr, b), None) for lr, b in itertools.product(LRS, BATCHES)]
    rows += [(0.5, 32, "m.MLP", "FINISHED", 0.1, "true"),  # pruned: of fewer epochs, left out
             (0.7, 32, "m.MLP", "FAILED", None, None)]
    swept = importance.swept_params(_frame(rows))
    assert swept.numeric == ["optimizer.lr", "trainer.batch_size"] and swept.text == []  # seed, model: one value
    assert len(swept.values) == 8 and swept.left_out == {"not FINISHED": 1, "pruned early": 1}
    assert swept.log_scale("optimizer.lr") and not swept.log_scale("trainer.batch_size")
    import optuna

    dists = importance.distributions(swept)
    assert dists["optimizer.lr"] == optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)
    assert dists["trainer.batch_size"] == optuna.distributions.IntDistribution(64, 256)


def test_fanova_ranks_the_learning_rate_first():
    rows = [(lr, b, "m.LogReg" if b == 64 else "m.MLP", "FINISHED", _acc(lr, b), None)
            for lr, b in itertools.product(LRS, BATCHES)]
    swept = importance.swept_params(_frame(rows))
    assert swept.text == ["model._target_"]  # text: a categorical distribution
    scores = importance.importances(swept)
    assert list(scores)[0] == "optimizer.lr" and scores["optimizer.lr"] > 0.8, scores
    assert sum(scores.values()) == pytest.approx(1.0)


@pytest.mark.parametrize("rows, why", [
    ([(1e-3, 64, "m", "FINISHED", 0.5, None), (1e-2, 64, "m", "FINISHED", 0.6, None)],
     "2 finished job(s); importance needs at least 3"),
    ([(1e-3, 64, "m", "FINISHED", 0.5, None)] * 3, "no parameter differs among the sweep's finished jobs"),
    ([(1e-3, 64, "m", "FINISHED", 0.5, None), (1e-2, 64, "m", "FINISHED", 0.5, None),
      (1e-1, 64, "m", "FINISHED", 0.5, None)], "every finished job has the same best_val_acc"),
])
def test_too_little_to_rank_says_why(rows, why):
    assert importance.why_no_importance(importance.swept_params(_frame(rows))) == why


# -- through the command, on a real store ------------------------------------------------------------


@pytest.fixture(scope="module")
def sweep_store(tmp_path_factory):
    """A grid sweep of 8 jobs (lr x batch size, one pruned more) and a sweep of 2 jobs."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("report_sweep")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("cifar_sweep", artifact_location=(root / "artifacts").as_uri())

    def sweep(name, jobs):
        parent = client.create_run(exp, run_name=f"sweep {name}", tags={"sweep_parent": "true", "sweep_id": name})
        for num, (lr, batch, acc, pruned) in enumerate(jobs):
            run = client.create_run(exp, run_name=f"lr={lr} batch_size={batch}", tags={
                "sweep_id": name, "mlflow.parentRunId": parent.info.run_id, "job_num": str(num), "model": "logreg",
                "dataset": "synthetic", "config_hash": f"h{name}{num}", "device": "cpu", "threads": "2",
                **({"pruned": "true", "pruned_at_epoch": "1"} if pruned else {})})
            client.log_batch(run.info.run_id, params=[Param("optimizer.lr", str(lr)),
                                                      Param("trainer.batch_size", str(batch)), Param("seed", "0")],
                             metrics=[Metric("best_val_acc", acc, 0, 0), Metric("val_acc", acc, 0, 0)])
            client.set_terminated(run.info.run_id, "FINISHED")
        client.set_terminated(parent.info.run_id, "FINISHED")
        return parent.info.run_id

    grid = sweep("grid", [(lr, b, _acc(lr, b), False) for lr, b in itertools.product(LRS, BATCHES)]
                 + [(0.3, 32, 0.1, True)])
    pair = sweep("pair", [(1e-3, 64, 0.5, False), (1e-2, 64, 0.6, False)])
    return uri, grid, pair, root


def test_report_sweep_draws_the_chart_and_prints_the_importances(sweep_store, capsys):
    from PIL import Image

    from cifar_sweep.commands import report

    uri, grid, _, root = sweep_store
    out = root / "grid.html"
    assert report.main(["--tracking-uri", uri, "--sweep", grid[:8], "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"sweep {grid[:8]}: 9 jobs, 8 finished (1 pruned early: left out)"
    assert printed[1] == "swept: optimizer.lr (log), trainer.batch_size"
    assert printed[2] == "importance for best_val_acc (Optuna fANOVA over 8 jobs):"
    ranked = [line.split() for line in printed[3:]]
    assert [r[0] for r in ranked] == ["optimizer.lr", "trainer.batch_size"] and float(ranked[0][1]) > 0.8
    page = out.read_text()
    glance = page[page.index("The sweep at a glance"):]
    png = base64.b64decode(re.search(r'src="data:image/png;base64,([^"]+)" alt="parallel coordinates', glance)[1])
    assert Image.open(io.BytesIO(png)).size[0] >= 600
    assert "Parameter importance for best_val_acc" in glance and "<td>optimizer.lr</td>" in glance


def test_report_sweep_with_too_few_jobs_says_why_in_one_line(sweep_store, capsys):
    from cifar_sweep.commands import report

    uri, _, pair, root = sweep_store
    assert report.main(["--tracking-uri", uri, "--sweep", "pair", "--out", str(root / "pair.html")]) == 0
    printed = capsys.readouterr().out
    assert "no parameter importance: 2 finished job(s); importance needs at least 3" in printed
    assert "No parameter importance: 2 finished job(s)" in (root / "pair.html").read_text()


def test_report_of_an_unknown_sweep_is_one_line(sweep_store, capsys):
    from cifar_sweep.commands import report

    uri, _, _, root = sweep_store
    assert report.main(["--tracking-uri", uri, "--sweep", "nosuch", "--out", str(root / "x.html")]) != 0
    err = capsys.readouterr().err
    assert "matches --sweep nosuch" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
