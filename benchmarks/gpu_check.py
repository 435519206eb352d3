"""The GPU check: every CUDA path of the project exercised on a real GPU, in one timed pass.

    bash benchmarks/gpu_check.sh          # on the GPU machine (installs the carried wheels first)
    .venv/bin/python benchmarks/gpu_check.py --smoke   # here: the same steps on the CPU, tiny

In order, each step with its own time limit inside an overall budget (default 450 s):
  1. the machine: GPU name, torch, the matmul peak of the GPU (8192^2; bf16, fp16, fp32) and of the CPU
     (2048^2; bf16, fp32), so each run's fraction of peak is against the dtype it computed in;
  2. `pytest -m gpu` (tests/test_gpu.py and any other test marked gpu);
  3. `experiment=resnet_cifar2` on the GPU (the ResNet exercise: target under 5 s, above 95%);
  4. `experiment=airbench data.val_size=0` on the GPU (target 93.5% in under 10 s of training);
  5. `model=cnn_simple` for 4 epochs on the GPU and on the CPU, and the ResNet exercise on the CPU;
  6. `cifar-compare-devices` on those runs (GPU/CPU speed-up of cnn_simple and resnet_seed);
then one summary table: per run, the exercise's "time", training (first epoch apart), evaluation,
images/s and their fraction of the device's peak, the per-epoch tracking gap, test accuracy.
A step that fails is reported as failed and the others still run. Everything is also written to
--log-dir (gpu_check.json, gpu_check.log, the pytest and compare outputs).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as common

EXPERIMENT = "gpu_check"


class Budget:
    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def allow(self, wanted: float) -> float | None:
        """Seconds this step may take, or None when too little is left to start it."""
        left = self.left() - 5
        return min(wanted, left) if left >= 20 else None


def log(line: str, sink) -> None:
    print(line, flush=True)
    sink.write(line + "\n")
    sink.flush()


def machine(device: str) -> dict:
    import torch

    info = {"torch": torch.__version__, "python": sys.version.split()[0], "cpu": common.cpu_model(),
            "cpu_cores": len(os.sched_getaffinity(0)), "cuda": torch.cuda.is_available()}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_peaks"] = {}
    info["cpu_peaks"] = {}
    measure_peaks(info)
    return info


def measure_peaks(info: dict) -> None:
    """Read the matmul peaks (again), keeping the highest reading of each dtype in place.

    One reading on a shared machine can come in well low, and a run's fraction of a low peak then
    passes 100%; so the check reads before and after its runs, as bench_resnet_cifar2 does. Every dtype
    a run may train in is read: on a CPU whose bf16 units are slower than its fp32 ones, `precision=auto`
    trains in fp32, and its fraction must be of the fp32 peak.
    """
    for key, device, dtypes in (("gpu_peaks", "cuda", ("bf16", "fp16", "fp32")), ("cpu_peaks", "cpu", ("bf16", "fp32"))):
        if key not in info:
            continue
        for d in dtypes:
            reading = common.matmul_peak(device, d)
            if d not in info[key] or reading["gflops"] > info[key][d]["gflops"]:
                info[key][d] = reading


def run_pytest(log_dir: Path, timeout: float) -> dict:
    files = sorted(str(p) for p in (common.ROOT / "tests").glob("test_*.py")
                   if "mark.gpu" in p.read_text(encoding="utf-8"))
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "-o", "addopts=-ra",
           f"--junitxml={log_dir / 'pytest_gpu.xml'}", *files]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=common.ROOT, capture_output=True, text=True, timeout=timeout)
        out, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as err:
        out, code = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else (err.stdout or ""), "timeout"
    (log_dir / "pytest_gpu.txt").write_text(out)
    last = [line for line in out.splitlines() if line.strip()][-1:] or ["(no output)"]
    return {"code": code, "summary": last[0], "seconds": round(time.perf_counter() - start, 1), "files": files}


def train_run(name: str, overrides: list[str], home: Path, timeout: float, flops: float) -> dict:
    """One CLI run; its figures from the store (epoch times, evaluation, the between-epoch gap)."""
    start = time.perf_counter()
    try:
        result = common.run_cli([*overrides, f"tracking.experiment={EXPERIMENT}", "trainer.progress=false"], home,
                                echo=True, timeout=timeout)
    except (SystemExit, subprocess.TimeoutExpired) as err:
        return {"name": name, "ok": False, "error": str(err), "seconds": round(time.perf_counter() - start, 1)}
    m = common.last_run_metrics(home, EXPERIMENT)
    train, evals, elapsed, rates = m["epoch_time_s"], m["eval_time_s"], m["elapsed_s"], m["images_per_s"]
    # Between two epochs' evaluations, what is neither training nor evaluation: checkpoint, metrics, grid.
    gaps = [elapsed[e] - elapsed[e - 1] - train[e] - evals[e] for e in range(1, len(elapsed))]
    steady = common.median(rates[1:] or rates)
    lines = result["epochs"]
    return {
        "name": name, "ok": True, "run_id": m["run_id"], "device": m["tags"].get("device"),
        "precision": m["tags"].get("precision"), "epochs": len(train),
        "time_s": lines[-1]["time"] if lines else None, "process_s": result["process_wall_s"],
        "train_s": round(sum(train), 2), "first_epoch_s": round(train[0], 2),
        "first_step_s": m["summary"].get("first_step_s"), "steady_epoch_s": round(common.median(train[1:] or train), 3),
        "eval_s": round(sum(evals), 2), "steady_images_per_s": round(steady),
        "flops_per_image": flops, "fraction_of_peak": None,  # set once the peaks are read again
        "gap_pct": round(100 * common.median(gaps) / common.median(train[1:]), 2) if gaps else None,
        "test_acc": result["test_acc"], "accuracy_by_epoch": [common.accuracy_of(r) for r in lines],
        "seconds": round(time.perf_counter() - start, 1),
    }


def compare(home: Path, log_dir: Path, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "cifar_sweep.commands.compare_devices", "--experiment", EXPERIMENT,
           "--tracking-uri", f"sqlite:///{home / 'runs' / 'mlflow.db'}"]
    try:
        proc = subprocess.run(cmd, cwd=common.ROOT, capture_output=True, text=True, timeout=timeout,
                              env=dict(os.environ, CIFAR_SWEEP_HOME=str(home)))
        out, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired:
        out, code = "", "timeout"
    (log_dir / "compare_devices.txt").write_text(out)
    return {"code": code, "output": out}


def summary_rows(runs: list[dict]) -> list[tuple]:
    pct = lambda v: "-" if v is None else f"{v:.0%}"  # noqa: E731
    rows = []
    for r in runs:
        if not r["ok"]:
            rows.append((r["name"], "FAILED", "-", "-", "-", "-", "-", "-", "-", "-", r["error"][:60]))
            continue
        first = f"{r['first_epoch_s']:.2f}" + (f" ({r['first_step_s']:.2f})" if r.get("first_step_s") else "")
        device = f"{r['device']} {r.get('precision') or ''}".strip()
        rows.append((r["name"], device, r["time_s"], r["train_s"], first, r["steady_epoch_s"], r["eval_s"],
                     r["steady_images_per_s"], pct(r["fraction_of_peak"]),
                     "-" if r["gap_pct"] is None else f"{r['gap_pct']:.1f}%", r["test_acc"]))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for the whole check (default 450)")
    parser.add_argument("--log-dir", type=Path, default=common.RESULTS / "gpu_check")
    parser.add_argument("--smoke", action="store_true",
                        help="no GPU needed: the same steps on the CPU (2 threads vs 1), one short epoch or two")
    parser.add_argument("--skip-tests", action="store_true")
    args = parser.parse_args()
    budget = Budget(args.budget)
    args.log_dir.mkdir(parents=True, exist_ok=True)
    sink = open(args.log_dir / "gpu_check.log", "w")
    import torch

    if not args.smoke and not torch.cuda.is_available():
        log("gpu_check: no CUDA device here; use --smoke to try the steps on the CPU", sink)
        return 2
    gpu = "cpu" if args.smoke else "cuda"
    gpu_side = ["trainer.device=cpu", "trainer.threads=2"] if args.smoke else ["trainer.device=cuda"]
    cpu_side = ["trainer.device=cpu"] + (["trainer.threads=1"] if args.smoke else [])
    short = ["trainer.limit_train_batches=3", "diagnostics.embedding=false"] if args.smoke else []
    epochs = (lambda n: [f"trainer.epochs={min(n, 2)}"]) if args.smoke else (lambda n: [f"trainer.epochs={n}"])

    report: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "smoke": args.smoke}
    report["machine"] = machine(gpu)
    peak_gpu = report["machine"].get("gpu_peaks") or report["machine"]["cpu_peaks"]
    peak_cpu = report["machine"]["cpu_peaks"]
    log(f"machine: {json.dumps(report['machine'])}", sink)

    if not args.skip_tests and not args.smoke and (limit := budget.allow(200)):
        log(f"== pytest -m gpu (limit {limit:.0f} s)", sink)
        report["pytest"] = run_pytest(args.log_dir, limit)
        log(f"pytest: {report['pytest']['summary']} ({report['pytest']['seconds']} s)", sink)

    flops = {m: common.training_flops_per_image(common.build_model(m, k))
             for m, k in (("resnet_seed", 2), ("airbench", 10), ("cnn_simple", 10))}
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        home = Path(tmp)
        t = time.perf_counter()
        report["setup"] = common.prepare_home(home)
        log(f"setup (decode the JPEG copy, create the store): {time.perf_counter() - t:.1f} s", sink)
        plan = [
            ("resnet_cifar2 GPU", ["experiment=resnet_cifar2", *gpu_side, *epochs(5), *short], 120, "resnet_seed", peak_gpu),
            ("airbench GPU", ["experiment=airbench", "data.val_size=0", *gpu_side, *epochs(10), *short], 150,
             "airbench", peak_gpu),
            ("cnn_simple GPU", ["model=cnn_simple", *gpu_side, *epochs(4), *short], 90, "cnn_simple", peak_gpu),
            ("cnn_simple CPU", ["model=cnn_simple", *cpu_side, *epochs(4), *short], 120, "cnn_simple", peak_cpu),
            ("resnet_cifar2 CPU", ["experiment=resnet_cifar2", *cpu_side, *epochs(5), *short], 120, "resnet_seed",
             peak_cpu),
        ]
        for name, overrides, wanted, model, peak in plan:
            limit = budget.allow(wanted)
            if limit is None:
                runs.append({"name": name, "ok": False, "error": "skipped: the check's time budget is spent",
                             "seconds": 0})
                continue
            log(f"== {name} (limit {limit:.0f} s)", sink)
            runs.append(train_run(name, overrides, home, limit, flops[model]) | {"peaks": peak})
            log(json.dumps({k: v for k, v in runs[-1].items() if k != "peaks"}), sink)
        if (limit := budget.allow(60)) is not None:
            log("== cifar-compare-devices", sink)
            report["compare"] = compare(home, args.log_dir, limit)
    measure_peaks(report["machine"])
    for r in runs:
        peaks = r.pop("peaks", None)
        if r["ok"]:
            peak = common.peak_for(peaks, r["precision"])
            r["fraction_of_peak"] = round(common.fraction_of_peak(r["steady_images_per_s"], r["flops_per_image"], peak), 3)
    report["runs"] = runs

    log("", sink)
    log(f"GPU check on {report['machine'].get('gpu', 'the CPU (smoke)')}, torch {report['machine']['torch']}; "
        f"peaks: {common.peak_line([*report['machine'].get('gpu_peaks', {}).values(), *peak_cpu.values()])}"
        " (the highest reading, before and after the runs); 'of peak' is against the peak of the run's"
        " precision on its device", sink)
    if "pytest" in report:
        log(f"pytest -m gpu: {report['pytest']['summary']} (exit {report['pytest']['code']}, "
            f"{report['pytest']['seconds']} s)", sink)
    log(common.table(["run", "device, dtype", "'time' s", "train s", "1st epoch s (1st step)", "steady epoch s", "eval s",
                      "img/s", "of peak", "gap/epoch", "test acc"], summary_rows(runs)), sink)
    if "compare" in report:
        log("", sink)
        log(report["compare"]["output"].rstrip(), sink)
    targets = [("resnet_cifar2 GPU", lambda r: r["time_s"] is not None and r["time_s"] < 5 and r["test_acc"] > 0.95,
                "under 5 s, above 95%"),
               ("airbench GPU", lambda r: r["train_s"] < 10 and r["test_acc"] >= 0.935, "93.5% in under 10 s of training")]
    for name, met, what in targets:
        run = next((r for r in runs if r["name"] == name), None)
        if run is not None and run["ok"]:
            log(f"target {name}: {what}: {'met' if met(run) else 'MISSED'}", sink)
    report["seconds"] = round(args.budget - budget.left(), 1)
    log(f"gpu_check: {report['seconds']} s in all (budget {args.budget:.0f} s)", sink)
    (args.log_dir / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    failed = [r["name"] for r in runs if not r["ok"]] + (["pytest"] if report.get("pytest", {}).get("code") not in (0, None) else [])
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
