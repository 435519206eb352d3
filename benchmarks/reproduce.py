"""Reproduce every write-up preset on the JPEG copy and write what it measured beside what was reported.

    .venv/bin/python benchmarks/reproduce.py [--presets a,b] [--seeds 0,1] [--quick] [--jobs N] [--home DIR]

Each preset runs through the real CLI as a user runs it (`cifar-sweep -m experiment=P seed=...`, a
sweep per preset) in an isolated CIFAR_SWEEP_HOME (default /tmp/cifar-sweep-reproduce; never the
checkout's store). A relaunch skips the jobs that already FINISHED (the sweep's own rule), so an
interrupted reproduction continues where it stopped and `--report-only` rewrites the report alone.
The rows, their verdicts and the report are the package's (`cifar_sweep.analysis.reproduction`
reads the store through the leaderboard's own ranking; `cifar_sweep.commands.reproduction_view` writes
the Markdown), so `cifar-leaderboard --reproduction --format md` prints the same report from any store;
this script runs the sweeps, keeps the commands run against its store and writes the two files.

Writes benchmarks/results/reproduce.json (raw figures) and benchmarks/REPRODUCE.md (the table).
A preset this store holds no run of keeps the row the previous reproduce.json measured (marked with the
date and store it came from, its commands kept beside it), so a week of CPU runs survives a lost /tmp:
rerunning a preset replaces its row; `--no-carry` writes only what this store holds. `--presets` picks
what trains; the report always has a row per preset, so a second pass over a few presets (more seeds,
a fixed recipe) never drops the others from the table.
`--quick` is a smoke check of the whole path (a few batches per preset, in an experiment of its own),
not a reproduction: its verdicts are not judged.

resnet9 and resnet18 take hours on a CPU: they always run a shortened schedule (a few thousand images
per epoch) that shows they learn, and the report estimates a full run's time from its per-epoch costs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import _common as common

from cifar_sweep.analysis import reproduction
from cifar_sweep.analysis.ranking import Query
from cifar_sweep.analysis.reproduction import PRESETS, carried
from cifar_sweep.commands.reproduction_view import markdown
from cifar_sweep.tracking.store import StoreError

ROOT = common.ROOT
CLI = Path(sys.executable).with_name("cifar-sweep")
REPORT = common.HERE / "REPRODUCE.md"
EXPERIMENT = "reproduce"
QUICK_EXPERIMENT = "reproduce_quick"
QUICK = ("trainer.epochs=1", "trainer.limit_train_batches=20", "diagnostics.tsne=false")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default=",".join(PRESETS),
                   help="comma-separated presets to train (default: all); the report always covers every preset")
    p.add_argument("--seeds", help="comma-separated seeds for every preset (default: two, or one for a "
                                   "preset whose run takes over ten minutes here)")
    p.add_argument("--quick", action="store_true", help="a few batches per preset: a smoke check of the path")
    p.add_argument("--jobs", type=int, default=1, help="presets trained at once (default 1)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per run (default 1: on a shared 2-core machine one thread per run "
                        "trained the batch-32 nets several times faster than two)")
    p.add_argument("--home", type=Path, default=Path(os.environ.get("REPRODUCE_HOME", "/tmp/cifar-sweep-reproduce")),
                   help="CIFAR_SWEEP_HOME of the runs (their store and data cache)")
    p.add_argument("--report-only", action="store_true", help="train nothing; rewrite the report from the store")
    p.add_argument("--no-write", action="store_true", help="print the table, write neither file")
    p.add_argument("--no-carry", action="store_true",
                   help="leave out the rows an earlier store measured (default: keep them, marked)")
    args = p.parse_args(argv)
    args.presets = [s.strip() for s in args.presets.split(",") if s.strip()]
    unknown = [s for s in args.presets if s not in PRESETS]
    if unknown:
        p.error(f"unknown preset(s) {', '.join(unknown)}; choose from {', '.join(PRESETS)}")
    if args.seeds is not None:
        try:
            args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            p.error(f"--seeds wants comma-separated integers, got {args.seeds!r}")
    if args.jobs < 1 or args.threads < 1:
        p.error("--jobs and --threads want a positive number")
    return args


def seeds_for(name: str, args) -> list[int]:
    if args.seeds is not None:
        return args.seeds
    return list(range(1 if args.quick else PRESETS[name].seeds))


def overrides_for(name: str, args) -> list[str]:
    """What every run of this preset is given; the same list on a relaunch, so finished jobs are skipped."""
    out = [f"experiment={name}", f"trainer.threads={args.threads}", "trainer.progress=false",
           f"tracking.experiment={QUICK_EXPERIMENT if args.quick else EXPERIMENT}"]
    out += list(QUICK if args.quick else PRESETS[name].shortened)
    return out


# -- running --------------------------------------------------------------------------------------


def run_preset(name: str, args) -> dict:
    seeds = seeds_for(name, args)
    cmd = [str(CLI), "-m", *overrides_for(name, args), "seed=" + ",".join(map(str, seeds))]
    env = dict(os.environ, CIFAR_SWEEP_HOME=str(args.home), PYTHONUNBUFFERED="1")
    log = args.home / "logs" / f"{name}{'_quick' if args.quick else ''}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(cmd[1:])}  (log: {log})", flush=True)
    start = time.perf_counter()
    with log.open("a") as out:
        code = subprocess.run(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - start
    print(f"[{time.strftime('%H:%M:%S')}] {name}: exit {code} after {wall:.0f} s", flush=True)
    return {"command": " ".join(cmd[1:]), "exit": code, "sweep_wall_s": round(wall, 1)}


# -- reading (the package's rows and report) ------------------------------------------------------


def measure(names: list[str], args) -> list[dict]:
    """One row per preset from this home's store; a store not made yet gives NOT RUN rows."""
    query = Query(tracking_uri=common.store_uri(args.home), experiment=QUICK_EXPERIMENT if args.quick else EXPERIMENT)
    try:
        return reproduction.measure(query, names, judged=not args.quick)
    except StoreError as err:
        print(f"no run read from {query.tracking_uri}: {err}", file=sys.stderr)
        return [reproduction.not_run(name) for name in names]


def previous_report() -> dict | None:
    """The reproduce.json this run replaces (None when there is none or it does not parse)."""
    try:
        return json.loads((common.RESULTS / "reproduce.json").read_text())
    except (OSError, ValueError):
        return None


def main(argv=None) -> int:
    args = parse_args(argv)
    args.home.mkdir(parents=True, exist_ok=True)
    info = common.machine()
    command = (".venv/bin/python benchmarks/reproduce.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    # Every invocation against this store, so the report names all the commands its figures came from.
    history = args.home / "reproduce_commands.txt"
    if not args.no_write:
        with history.open("a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M')}  {command}\n")
    runs = {}
    if not args.report_only:
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for name, result in zip(args.presets, pool.map(lambda n: run_preset(n, args), args.presets)):
                runs[name] = result
    # A --quick smoke check reports what it ran; a reproduction reports the whole zoo.
    results = measure(args.presets if args.quick else list(PRESETS), args)
    for r in results:
        r.update(runs.get(r["preset"], {}))
    if not args.no_carry and not args.quick:
        results = carried(results, previous_report())
    commands = history.read_text().splitlines() if history.exists() else [command]
    source = f"Written by `benchmarks/reproduce.py` on {info['date']}; machine: {common.describe(info)}."
    text = markdown(results, source, commands if not args.no_write else [command], args.quick, home=str(args.home))
    print(text)
    if not args.no_write:
        payload = {"machine": info, "command": command.strip(), "commands": commands, "quick": args.quick,
                   "home": str(args.home), "results": results}
        if args.quick:
            common.write_result("reproduce_quick", payload)
        else:
            common.write_result("reproduce", payload)
            REPORT.write_text(text)
            print(f"wrote {REPORT.relative_to(ROOT)}")
    failed = [n for n, r in runs.items() if r["exit"] != 0]
    if failed:
        print(f"sweeps that exited non-zero: {', '.join(failed)} (logs under {args.home / 'logs'})", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
