"""How long the leaderboard takes to rank a store of 1,000 runs (target: at most 2 s).

Fills a fresh SQLite store in a temporary folder with synthetic runs shaped like real training runs
(params, tags, per-epoch histories, summary metrics, seeds that fold), then times the ranking call
(`leaderboard.build`: search + fold + sort + per-epoch throughput of the shown rows) and rendering.
Prints a table and writes benchmarks/results/leaderboard.json.

    python benchmarks/bench_leaderboard.py [--runs 1000] [--epochs 10] [--repeat 3]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import _common as common
from mlflow.entities import Metric, Param

from cifar_sweep.commands import leaderboard
from cifar_sweep.tracking import queries
from cifar_sweep.tracking.store import open_store

MODELS = ["cnn_simple", "cnn_adv", "lenet", "resnet9", "resnet18", "mlp", "logreg", "keras_cnn"]
OPTIMIZERS = ["adam", "sgd", "rmsprop", "adamw"]
SCHEDULES = ["constant", "cosine", "linear", "onecycle", "step"]


def fill_store(client, artifacts: Path, n_runs: int, epochs: int, seed: int = 0) -> float:
    """n_runs FINISHED runs, 3 seeds per config; returns the seconds it took."""
    rng = random.Random(seed)
    exp = client.create_experiment("cifar_sweep", artifact_location=artifacts.as_uri())
    start = time.perf_counter()
    for i in range(n_runs):
        config, run_seed = divmod(i, 3)
        model, opt = MODELS[config % len(MODELS)], OPTIMIZERS[config % len(OPTIMIZERS)]
        sched, lr = SCHEDULES[config % len(SCHEDULES)], 10 ** -rng.uniform(1, 4)
        tags = {
            "model": model, "optimizer": opt, "schedule": sched, "data": "folder", "device": "cpu",
            "device_name": "bench CPU", "threads": "2", "precision": "fp32", "config_hash": f"h{config:05d}",
            "sweep_id": "bench", "job_num": str(i), "n_params": str(rng.randint(10_000, 11_000_000)),
            "warmup_epoch": "0",
        }
        run = client.create_run(exp, run_name=f"{model} {opt} lr={lr:.4g}", tags=tags)
        params = {
            "model._target_": f"cifar_sweep.models.{model}", "optimizer._target_": opt, "optimizer.lr": f"{lr:.4g}",
            "optimizer.weight_decay": "0.0", "schedule._target_": sched, "trainer.epochs": str(epochs),
            "trainer.batch_size": "128", "trainer.device": "cpu", "trainer.threads": "2",
            "trainer.precision": "fp32", "seed": str(run_seed), "data.val_size": "5000",
        }
        ceiling, ts, metrics = rng.uniform(0.3, 0.95), 1_700_000_000_000 + i * 1000, []
        best = 0.0
        for e in range(epochs):
            val = ceiling * (1 - 0.7 ** (e + 1))
            best = max(best, val)
            for key, value in {
                "train_loss": 2.0 * 0.8 ** e, "train_acc": val + 0.02, "val_loss": 2.1 * 0.8 ** e, "val_acc": val,
                "lr": lr, "epoch_time_s": 30.0 + rng.random(), "images_per_s": 1500 + rng.random() * 100,
                "elapsed_s": 35.0 * (e + 1),
            }.items():
                metrics.append(Metric(key, value, ts + e, e))
        summary = {"best_val_acc": best, "best_epoch": epochs - 1, "test_acc": best - 0.01, "test_loss": 0.8,
                   "train_time_s": 30.0 * epochs}
        metrics += [Metric(k, v, ts + epochs, 0) for k, v in summary.items()]
        client.log_batch(run.info.run_id, metrics=metrics[:1000],
                         params=[Param(k, v) for k, v in params.items()], tags=[])
        for j in range(1000, len(metrics), 1000):
            client.log_batch(run.info.run_id, metrics=metrics[j:j + 1000])
        client.set_terminated(run.info.run_id, "FINISHED")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        t0 = time.perf_counter()
        client = open_store(uri, create=True)  # migrations, timed apart from the fill
        migrate_s = time.perf_counter() - t0
        fill_s = fill_store(client, Path(tmp) / "artifacts", args.runs, args.epochs)

        timings: dict[str, list[float]] = {"rank": [], "rank_target": [], "render_table": []}
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            board = leaderboard.build(leaderboard.Query(tracking_uri=uri))
            timings["rank"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            leaderboard.render(board, "table")
            timings["render_table"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            leaderboard.build(leaderboard.Query(tracking_uri=uri, target=0.5))
            timings["rank_target"].append(time.perf_counter() - t0)

        # For the record: the same load through MLflow's public search_runs (what the fast path replaces).
        t0 = time.perf_counter()
        queries.load_runs_paged(client, queries.experiment_ids(client, ["cifar_sweep"]))
        paged_s = time.perf_counter() - t0

    result = {
        "runs": args.runs, "epochs": args.epochs, "rows": len(board), "repeat": args.repeat,
        "migrate_s": round(migrate_s, 3), "fill_s": round(fill_s, 3),
        **{f"{k}_s_median": round(statistics.median(v), 3) for k, v in timings.items()},
        **{f"{k}_s_max": round(max(v), 3) for k, v in timings.items()},
        "load_via_search_runs_s": round(paged_s, 3), "target_s": 2.0,
    }
    result["pass"] = result["rank_s_max"] <= result["target_s"]
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    common.write_result("leaderboard", {"machine": common.machine(), **result})
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
