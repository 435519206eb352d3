"""What the shared store holds up to: SLURM jobs writing one PostgreSQL-backed MLflow server, and the
leaderboard reading 10,000 runs through it.

    .venv/bin/python benchmarks/bench_shared_store.py [--jobs 16] [--parallel 2] [--runs 10000]

Starts what the test suite starts (tests/slurm_cluster.py, tests/tracking_server_fixtures.py): a
private PostgreSQL cluster, `scripts/tracking_server.sh` on it (2 workers) and a one-node SLURM cluster
(2 CPUs), all on loopback, all stopped at the end. Then:

1. `cifar-sweep -m hydra/launcher=slurm hydra.launcher.array_parallelism=2 seed=0..15` of 1-epoch
   synthetic jobs (one CPU each) against the server: wall time, squeue's view while it runs, and
   whether anything was lost (every job a FINISHED run under the parent, every epoch metric there).
2. 10,000 FINISHED runs shaped like those jobs' (their params, tags, summary metrics and per-epoch
   images_per_s), inserted with MLflow's own client straight into the server's PostgreSQL database
   (the server reads that database, nothing is cached); then `cifar-leaderboard --tracking-uri
   http://...` timed against the server, as a user runs it, plus the CSV of every run (`--no-fold`).

Writes benchmarks/results/shared_store.json. Not a test: minutes of CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from slurm_cluster import slurm_cluster  # noqa: E402
from tracking_server_fixtures import postgres_cluster, tracking_server  # noqa: E402

EPOCH_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time_s", "images_per_s")
MODELS = ("logreg", "mlp", "cnn_simple", "lenet", "resnet9")


def run(cmd: list[str], env: dict, cwd: Path, timeout: float) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    res = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    return res, time.monotonic() - started


def watch_queue(cluster, stop: threading.Event, seen: list[tuple[float, list[str]]]) -> None:
    started = time.monotonic()
    while not stop.is_set():
        seen.append((time.monotonic() - started, cluster.queue()))
        stop.wait(1.0)


def slurm_sweep(url: str, cluster, home: Path, jobs: int, parallel: int) -> dict:
    from mlflow.tracking import MlflowClient

    env = {**os.environ, **cluster.env, "CIFAR_SWEEP_HOME": str(home)}
    args = ["-m", "hydra/launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.gpus_per_node=0",
            "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1", f"hydra.launcher.array_parallelism={parallel}",
            "data=synthetic", "model=logreg", "trainer.epochs=1", f"seed=range(0,{jobs})",
            f"tracking.uri={url}", "tracking.experiment=bench_slurm"]
    stop, seen = threading.Event(), []
    watcher = threading.Thread(target=watch_queue, args=(cluster, stop, seen), daemon=True)
    watcher.start()
    res, took = run([sys.executable, "-m", "cifar_sweep.train", *args], env, home, timeout=3600)
    stop.set()
    watcher.join()
    if res.returncode != 0:
        raise SystemExit(f"the SLURM sweep failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    client = MlflowClient(url)
    exp = client.get_experiment_by_name("bench_slurm")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    parents = [r for r in runs if r.data.tags.get("sweep_parent") == "true"]
    missing = [(r.info.run_id, key) for r in children for key in EPOCH_METRICS
               if [m.step for m in client.get_metric_history(r.info.run_id, key)] != [0]]
    running_at_once = max(sum(" RUNNING " in f" {line} " for line in lines) for _, lines in seen)
    script = next(home.glob("runs/multirun/*/*/.submitit/*/*_submission.sh")).read_text()
    return {
        "command": "cifar-sweep " + " ".join(args),
        "jobs": jobs, "array_parallelism": parallel, "wall_s": round(took, 1),
        "finished_runs": sum(r.info.status == "FINISHED" for r in children),
        "runs_other_status": sorted({r.info.status for r in children} - {"FINISHED"}),
        "parent_status": [p.info.status for p in parents],
        "epoch_metrics_missing": missing,
        "most_jobs_running_at_once": running_at_once,
        "slurm_job_ids": sorted((r.data.tags.get("slurm_job_id") for r in children),
                                key=lambda j: int(j.split("_")[-1])),
        "squeue_sample": next((lines for _, lines in seen if sum("RUNNING" in x for x in lines) >= 2), []),
        "sbatch_lines": [line for line in script.splitlines() if line.startswith("#SBATCH") and "--error" not in line
                         and "--output" not in line],
        "summary_lines": [line for line in res.stdout.splitlines() if line.startswith("sweep summary")],
        "_template": children[0],
    }


def insert_runs(pg_uri: str, template, n: int, threads: int = 4) -> dict:
    """n FINISHED runs like `template` (same keys), varied in model, lr and seed, into experiment bench_board."""
    from mlflow.entities import Metric, Param, RunStatus
    from mlflow.tracking import MlflowClient

    client = MlflowClient(pg_uri.replace("postgresql://", "postgresql+psycopg://", 1))
    exp_id = client.create_experiment("bench_board")
    base_params = dict(template.data.params)
    base_tags = {k: v for k, v in template.data.tags.items() if not k.startswith("mlflow.") and k not in
                 ("sweep_id", "job_num", "sweep", "slurm_job_id", "slurm_restarts", "pid")}
    t0 = int(time.time() * 1000) - n * 1000

    def one(i: int) -> None:
        model, lr, seed = MODELS[i % len(MODELS)], 10 ** -(1 + (i // len(MODELS)) % 20 / 5), i // 100
        acc = 0.3 + 0.5 * ((i * 7919) % 1000) / 1000
        name = f"{model} lr={lr:.5f}"
        tags = {**base_tags, "model": model, "config_hash": f"h{model}{lr:.5f}", "mlflow.runName": name}
        params = {**base_params, "model.name": model, "optimizer.lr": f"{lr:.6g}", "seed": str(seed)}
        start = t0 + i * 1000
        run_ = client.create_run(exp_id, start_time=start, tags=tags, run_name=tags["mlflow.runName"])
        metrics = [Metric("best_val_acc", acc, start, 0), Metric("test_acc", acc - 0.01, start, 0),
                   Metric("train_time_s", 10.0 + i % 7, start, 0), Metric("best_epoch", 1, start, 0),
                   Metric("steady_images_per_s", 1001.0, start, 0)]  # as every run logs it now
        metrics += [Metric(key, acc * (step + 1) / 2 if key == "val_acc" else 1000.0 + step, start + step, step)
                    for key in ("val_acc", "images_per_s", "epoch_time_s") for step in (0, 1)]
        client.log_batch(run_.info.run_id, metrics=metrics, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
        client.set_terminated(run_.info.run_id, RunStatus.to_string(RunStatus.FINISHED), end_time=start + 500)

    started = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(n)))
    took = time.monotonic() - started
    return {"runs": n, "params_per_run": len(base_params), "tags_per_run": len(base_tags) + 1,
            "insert_s": round(took, 1), "insert_runs_per_s": round(n / took, 1), "insert_threads": threads}


def time_leaderboard(url: str, home: Path) -> dict:
    env = {**os.environ, "CIFAR_SWEEP_HOME": str(home)}
    lb = [sys.executable, "-m", "cifar_sweep.commands.leaderboard", "--tracking-uri", url,
          "--experiment", "bench_board"]
    out = {}
    for label, extra in (("folded_table", []), ("every_run_csv", ["--no-fold", "--format", "csv"])):
        res, took = run([*lb, *extra], env, home, timeout=3600)
        if res.returncode != 0:
            raise SystemExit(f"cifar-leaderboard {' '.join(extra)} failed:\n{res.stderr[-3000:]}")
        lines = res.stdout.splitlines()
        out[label] = {"wall_s": round(took, 1), "lines": len(lines), "head": lines[:6]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "shared_store.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_shared_store_"))
    try:
        result = measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


def measure(args: argparse.Namespace, work: Path) -> dict:
    result = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.processor()
              or platform.machine(), "cpus": os.cpu_count()}
    with postgres_cluster() as pg, tracking_server(pg, work / "server") as url, slurm_cluster() as cluster:
        home = work / "home"
        home.mkdir()
        print("SLURM sweep ...", flush=True)
        sweep = slurm_sweep(url, cluster, home, args.jobs, args.parallel)
        template = sweep.pop("_template")
        print(json.dumps(sweep, indent=1), flush=True)
        result["slurm_sweep"] = sweep
        print(f"inserting {args.runs} runs ...", flush=True)
        result["insert"] = insert_runs(pg, template, args.runs)
        print(json.dumps(result["insert"]), flush=True)
        result["leaderboard"] = time_leaderboard(url, home)
        print(json.dumps(result["leaderboard"], indent=1), flush=True)
    return result


if __name__ == "__main__":
    main()
