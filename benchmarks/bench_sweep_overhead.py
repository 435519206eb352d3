"""What a sweep job costs beyond its training: a sweep of short synthetic jobs, one process tree.

Runs `cifar-sweep -m seed=0,...,N-1 data=synthetic trainer.epochs=1` (the basic launcher: every job in
one process, as a short sweep runs) in a fresh project home, then reads each job's `seconds/<phase>`
metrics back from the store. Reports per job: training seconds, everything else (set-up, data,
evaluation, diagnostics, logging), and the sweep's wall time per job beyond training, which also
covers the interpreter's start, Hydra and the sweep's parent run, spread over the jobs.

Three sweeps run in the same home: the first also creates the MLflow store (its schema migrations
take seconds, once per project); the second (N jobs) and third (2N jobs) are what later sweeps cost,
and their difference is the marginal cost of one more job, free of the sweep's fixed start (the
interpreter importing torch, MLflow and Hydra, and each process's first job importing the rest).

    .venv/bin/python benchmarks/bench_sweep_overhead.py --jobs 6
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
PHASES = ("setup", "data", "training", "evaluation", "diagnostics", "logging", "pruning", "other")


def run_sweep(home: Path, seeds: range, extra: list[str]) -> float:
    args = [sys.executable, "-m", "cifar_sweep.train", "-m", f"seed={','.join(map(str, seeds))}",
            "data=synthetic", "trainer.epochs=1", "trainer.progress=false", *extra]
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=home, env={**os.environ, "CIFAR_SWEEP_HOME": str(home)},
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"the sweep failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall


def job_phases(home: Path, seeds: range) -> list[dict[str, float]]:
    from cifar_sweep.tracking import queries
    from cifar_sweep.tracking.store import open_store

    client = open_store(f"sqlite:///{home}/runs/mlflow.db")
    runs = queries.drop_sweep_parents(queries.load_runs(client, queries.experiment_ids(client, ["cifar_sweep"])))
    return [{p: float(row.get(f"metrics.seconds/{p}", 0.0) or 0.0) for p in (*PHASES, "total")}
            for row in runs.to_dict("records") if int(row["params.seed"]) in seeds]


def summarise(label: str, wall: float, jobs: list[dict[str, float]]) -> dict:
    median = {k: statistics.median(j[k] for j in jobs) for k in (*PHASES, "total")}
    training = sum(j["training"] for j in jobs)
    beyond = {k: v for k, v in median.items() if k not in ("training", "total")}
    in_job = median["total"] - median["training"]
    whole = (wall - training) / len(jobs)
    print(f"{label}: {len(jobs)} one-epoch synthetic jobs, {wall:.1f} s wall, {training:.1f} s of it training")
    print("  median seconds per job: " + ", ".join(f"{k} {v:.2f}" for k, v in median.items()))
    print(f"  per job beyond training, inside the job: {in_job:.2f} s "
          f"(largest: {max(beyond, key=beyond.get)} {max(beyond.values()):.2f} s)")
    print(f"  per job beyond training, whole sweep (interpreter, Hydra, parent run included): {whole:.2f} s")
    return {"jobs": len(jobs), "wall_s": wall, "training_s": training, "median_phase_s": median,
            "beyond_training_in_job_s": in_job, "beyond_training_whole_sweep_s": whole}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=6)
    p.add_argument("--no-write", action="store_true")
    p.add_argument("overrides", nargs="*", help="extra overrides for every job (e.g. diagnostics.tsne=true)")
    args = p.parse_args()
    load_before = os.getloadavg()[0]
    n = args.jobs
    sweeps = {"first sweep (creates the store)": range(n), "later sweep": range(n, 2 * n),
              "later sweep, twice as many jobs": range(2 * n, 4 * n)}
    with tempfile.TemporaryDirectory() as tmp:
        walls = {label: run_sweep(Path(tmp), seeds, args.overrides) for label, seeds in sweeps.items()}
        results = {label: summarise(label, walls[label], job_phases(Path(tmp), seeds))
                   for label, seeds in sweeps.items()}
    small, large = results["later sweep"], results["later sweep, twice as many jobs"]
    marginal = ((large["wall_s"] - large["training_s"]) - (small["wall_s"] - small["training_s"])) / n
    fixed = (small["wall_s"] - small["training_s"]) - marginal * n
    print(f"one more job costs {marginal:.2f} s beyond its training; a sweep's fixed start is {fixed:.1f} s")
    results["marginal_job_beyond_training_s"] = marginal
    results["sweep_fixed_start_s"] = fixed
    print(f"load average (1 min) before: {load_before:.2f}, after: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        out = RESULTS / "sweep_overhead.json"
        out.write_text(json.dumps({"sweeps": results, "overrides": args.overrides, "load_before": load_before,
                                   "cores": os.cpu_count()}, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
