"""The GPU check: the CUDA paths tested and the GPU timed against the CPU, in one pass of under 5 minutes.

    bash benchmarks/gpu_check.sh          # on the GPU machine (installs the carried wheels first)
    .venv/bin/python benchmarks/gpu_check.py --smoke   # here: the same steps on the CPU, tiny

The steps, most important first, each a child process whose time limit holds while it runs
(benchmarks/gpu_steps.py: its own process group, killed whole at its limit), inside an overall budget:
  1. machine: GPU and CPU names, torch, the matmul peaks of the GPU (8192^2; bf16, fp16, fp32) and of
     the CPU (2048^2; bf16, fp32), and the training FLOPs per image of the networks timed below;
  2. `pytest -m gpu` (tests/test_gpu.py), on 4 workers; meanwhile the JPEG copy is decoded into the
     runs' data cache and the MLflow store is made, so no run's time pays for either;
  3. the comparison: `model=cnn_simple` for 4 epochs of 80 batches on the GPU, then on the CPU (the
     same config: they pair), then `cifar-compare-devices` on them;
  4. `experiment=resnet_cifar2` on the GPU (the ResNet exercise: above 95% in under 5 s);
  5. `experiment=airbench` on the GPU (the carried JPEG copy tops out near 90.5%, so its target is
     the time to 90% test accuracy; 94% is the figure of the lossless images);
  6. the peaks again (a reading taken while a neighbour is busy comes in low: the highest counts).
After every step gpu_check.json is written again, so a check stopped at its limit still says what it
found. Each run's figures come from the store it logged to, with its system metrics (GPU utilisation
and memory, CPU) summarised. Everything goes to --log-dir, at most 8 files: gpu_check.json,
gpu_check.log, steps.log (every step's output), pytest_gpu.xml, compare_devices.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from gpu_steps import Budget, StepResult, run_step, stop_all

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
EXPERIMENT = "gpu_check"
MODELS = {"resnet_seed": 2, "airbench": 10, "cnn_simple": 10}  # network: classes it is timed with
COMPARE_BATCHES = 80  # cnn_simple's epochs in the comparison: 10,240 images, a few seconds on the CPU


# -- the machine step (run as `gpu_check.py --machine FILE`, a child like every step) ---------------


def machine_step(path: Path, device: str) -> None:
    """Write the machine, its matmul peaks (the highest of this and any earlier reading) and FLOPs per image."""
    import torch

    import _common as common

    info = json.loads(path.read_text()) if path.exists() else {}
    info.update({"torch": torch.__version__, "python": sys.version.split()[0], "cpu": common.cpu_model(),
                 "cpu_cores": len(os.sched_getaffinity(0)), "cuda": torch.cuda.is_available()})
    sides = [("cpu_peaks", "cpu", ("bf16", "fp32"))]
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        sides.insert(0, ("gpu_peaks", "cuda", ("bf16", "fp16", "fp32")))
    for key, dev, dtypes in sides:
        peaks = info.setdefault(key, {})
        for dtype in dtypes:
            reading = common.matmul_peak(dev, dtype)
            if dtype not in peaks or reading["gflops"] > peaks[dtype]["gflops"]:
                peaks[dtype] = reading
    if "flops_per_image" not in info:
        info["flops_per_image"] = {m: common.training_flops_per_image(common.build_model(m, k))
                                   for m, k in MODELS.items()}
    path.write_text(json.dumps(info, indent=2))
    print(json.dumps({k: v for k, v in info.items() if k != "flops_per_image"}), flush=True)


def prepare_step(home: Path) -> None:
    import _common as common

    print(json.dumps(common.prepare_home(home)), flush=True)


# -- reading a run back from its store --------------------------------------------------------------


def store_uri(home: Path) -> str:
    return f"sqlite:///{home / 'runs' / 'mlflow.db'}"


def read_run(home: Path) -> dict:
    """The newest run of the check's experiment: per-epoch figures, summary metrics, tags, and its
    system metrics summarised (mean and max of each `system/...` series)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store_uri(home))
    exp = client.get_experiment_by_name(EXPERIMENT)
    run = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]
    per_epoch = {}
    for key in ("epoch_time_s", "images_per_s", "eval_time_s", "elapsed_s", "val_acc", "compile_s"):
        history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
        per_epoch[key] = [m.value for m in history]
    system = {}
    for key in sorted(k for k in run.data.metrics if k.startswith("system/")):
        values = [m.value for m in client.get_metric_history(run.info.run_id, key)]
        if values:
            system[key[len("system/"):]] = {"mean": round(statistics.fmean(values), 1), "max": round(max(values), 1),
                                            "samples": len(values)}
    return {"run_id": run.info.run_id, "status": run.info.status, "metrics": dict(run.data.metrics),
            "tags": dict(run.data.tags), "per_epoch": per_epoch, "system": system}


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def run_figures(name: str, model: str, step: StepResult, home: Path) -> dict:
    out = {"name": name, "model": model, "ok": step.ok, "seconds": step.seconds}
    if not step.ok:
        return out | {"error": step.describe(), "tail": step.tail[-5:]}
    run = read_run(home)
    e, m = run["per_epoch"], run["metrics"]
    train, evals, elapsed = e["epoch_time_s"], e["eval_time_s"], e["elapsed_s"]
    # Between two epochs' evaluations, what is neither training nor evaluation: checkpoint, metrics, grid.
    gaps = [elapsed[k] - elapsed[k - 1] - train[k] - evals[k] for k in range(1, len(elapsed))]
    steady = e["images_per_s"][1:] or e["images_per_s"]
    gpu = {k: v for k, v in run["system"].items() if k.startswith("gpu")}
    return out | {
        "run_id": run["run_id"], "device": run["tags"].get("device"), "precision": run["tags"].get("precision"),
        "epochs": len(train), "time_s": round(elapsed[-1], 2) if elapsed else None,
        "train_s": round(sum(train), 2), "first_epoch_s": round(train[0], 2) if train else None,
        "first_step_s": m.get("first_step_s"), "steady_epoch_s": median(train[1:] or train),
        "eval_s": round(sum(evals), 2), "steady_images_per_s": round(median(steady) or 0),
        "gap_pct": round(100 * median(gaps) / median(train[1:]), 2) if gaps else None,
        "test_acc": m.get("test_acc"), "val_acc_by_epoch": [round(v, 4) for v in e["val_acc"]],
        "train_s_by_epoch": [round(v, 3) for v in train],
        "compile_s": m.get("total_compile_time_s"), "recompiles": m.get("total_recompiles"),
        "system_gpu": gpu, "system_cpu": run["system"].get("cpu_utilization_percentage"),
    }


# -- the check --------------------------------------------------------------------------------------


class Report:
    """gpu_check.json, written again after every step, and gpu_check.log, a line at a time."""

    def __init__(self, log_dir: Path, smoke: bool, budget: float):
        self.dir = log_dir
        self.data: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "smoke": smoke, "budget_s": budget,
                           "steps": [], "runs": []}
        self.sink = open(log_dir / "gpu_check.log", "w", encoding="utf-8")

    def say(self, line: str) -> None:
        print(line, flush=True)
        self.sink.write(line + "\n")
        self.sink.flush()

    def step(self, result: StepResult) -> StepResult:
        self.data["steps"].append(result.record())
        self.say(result.describe())
        self.save()
        return result

    def save(self) -> None:
        tmp = self.dir / ".gpu_check.json.tmp"
        tmp.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        os.replace(tmp, self.dir / "gpu_check.json")


def pytest_argv(log_dir: Path, workers: int) -> list[str]:
    files = sorted(str(p) for p in (ROOT / "tests").glob("test_*.py") if "mark.gpu" in p.read_text(encoding="utf-8"))
    spread = ["-n", str(workers)] if workers > 1 else ["-n", "0"]
    # -v: each test's result is in steps.log as it ends, so a step stopped at its limit still says which passed.
    return [sys.executable, "-m", "pytest", "-v", "-m", "gpu", "-p", "no:cacheprovider", "-o", "addopts=-ra", *spread,
            f"--junitxml={log_dir / 'pytest_gpu.xml'}", *files]


def pct(value) -> str:
    return "-" if value is None else f"{value:.0%}"


def summary_rows(runs: list[dict], machine: dict) -> list[list[str]]:
    rows = []
    for r in runs:
        if not r["ok"]:
            rows.append([r["name"], "FAILED", *["-"] * 10])
            continue
        side = "gpu_peaks" if str(r["device"]).startswith("cuda") else "cpu_peaks"
        peaks = machine.get(side) or {}
        peak = peaks.get(r["precision"]) or (max(peaks.values(), key=lambda p: p["gflops"]) if peaks else None)
        flops = (machine.get("flops_per_image") or {}).get(r["model"])
        frac = r["steady_images_per_s"] * flops / (peak["gflops"] * 1e9) if peak and flops else None
        r["fraction_of_peak"] = None if frac is None else round(frac, 4)
        first = f"{r['first_epoch_s']:.2f}" + (f" ({r['first_step_s']:.2f})" if r.get("first_step_s") else "")
        util = (r["system_gpu"].get("gpu_0_utilization_percentage") or {}).get("mean")
        rows.append([r["name"], f"{r['device']} {r['precision']}", f"{r['time_s']}", f"{r['train_s']:.2f}", first,
                     f"{r['steady_epoch_s']:.3f}", f"{r['eval_s']:.2f}", f"{r['steady_images_per_s']:,}", pct(frac),
                     "-" if r["gap_pct"] is None else f"{r['gap_pct']:.1f}%", "-" if util is None else f"{util:.0f}%",
                     f"{r['test_acc']:.4f}" if r["test_acc"] is not None else "-"])
    return rows


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def targets(runs: dict[str, dict]) -> list[tuple[str, bool | None, str]]:
    """(what, met or None when not measured, the figure) for each of the check's targets."""
    out = []
    r = runs.get("resnet_cifar2 GPU")
    if r and r["ok"]:
        out.append(("resnet_cifar2 GPU: above 95% test accuracy in under 5 s", r["time_s"] < 5 and r["test_acc"] > 0.95,
                    f"{r['test_acc']:.2%} at {r['time_s']} s"))
    a = runs.get("airbench GPU")
    if a and a["ok"]:
        # val = test here (data.val_size=0): the first epoch at 90%, and the training seconds up to it.
        reached = next((k for k, v in enumerate(a["val_acc_by_epoch"]) if v >= 0.90), None)
        figure = (f"90% after epoch {reached}, {sum(a['train_s_by_epoch'][:reached + 1]):.2f} s of training"
                  if reached is not None else f"not reached: {a['test_acc']:.2%} after {a['epochs']} epochs")
        out.append(("airbench GPU: 90% test accuracy on the JPEG copy (its ceiling is about 90.5%; 94% needs the "
                    "lossless images)", reached is not None, figure))
    g, c = runs.get("cnn_simple GPU"), runs.get("cnn_simple CPU")
    if g and c and g["ok"] and c["ok"]:
        ratio = c["steady_epoch_s"] / g["steady_epoch_s"] if g["steady_epoch_s"] else None
        out.append(("the GPU trains cnn_simple faster than the CPU", ratio is not None and ratio > 1,
                    "-" if ratio is None else f"{ratio:.1f}x (steady epoch {c['steady_epoch_s']:.2f} s vs "
                                              f"{g['steady_epoch_s']:.2f} s)"))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=285.0, help="seconds for the whole check (default 285)")
    parser.add_argument("--log-dir", type=Path, default=HERE / "results" / "gpu_check")
    parser.add_argument("--smoke", action="store_true",
                        help="no GPU needed: the same steps on the CPU (2 threads vs 1), two short epochs each")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--machine", type=Path, help=argparse.SUPPRESS)  # the machine step, as a child
    parser.add_argument("--device", default="cuda", help=argparse.SUPPRESS)
    parser.add_argument("--prepare", type=Path, help=argparse.SUPPRESS)  # the data and store step, as a child
    args = parser.parse_args()
    if args.machine:
        machine_step(args.machine, args.device)
        return 0
    if args.prepare:
        prepare_step(args.prepare)
        return 0

    args.log_dir.mkdir(parents=True, exist_ok=True)
    # Stopped from outside (the device call's limit, Ctrl-C): the step under way goes with the check.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        return check(args)
    finally:
        stop_all()


def check(args: argparse.Namespace) -> int:
    budget = Budget(args.budget)
    report = Report(args.log_dir, args.smoke, args.budget)
    steps_log = args.log_dir / "steps.log"
    steps_log.write_text("")
    me = [sys.executable, str(Path(__file__).resolve())]
    smoke = args.smoke
    # Limits: what each step takes on the H200 with room to spare; the smoke run on 2 shared cores is slower.
    limits = ({"machine": 120, "pytest": 120, "prepare": 150, "run": 240, "compare": 60} if smoke else
              {"machine": 45, "pytest": 120, "prepare": 90, "run": 75, "compare": 30})

    machine_file = Path(tempfile.mkdtemp(prefix="gpu-check-")) / "machine.json"
    gpu = "cpu" if smoke else "cuda"
    first = report.step(run_step("machine", [*me, "--machine", str(machine_file), "--device", gpu],
                                 budget.allow(limits["machine"]) or 1, steps_log, cwd=ROOT))
    machine = json.loads(machine_file.read_text()) if machine_file.exists() else {}
    report.data["machine"] = machine
    report.save()
    if not first.ok and not smoke:
        report.say("gpu_check: the machine step failed; is CUDA there? (`--smoke` runs the steps on the CPU)")

    home = Path(tempfile.mkdtemp(prefix="gpu-check-home-"))
    env = dict(os.environ, CIFAR_SWEEP_HOME=str(home), PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
    # The data cache and the store are made while the tests run: no run's time pays for either.
    prepared: list[StepResult] = []
    preparing = threading.Thread(daemon=True, target=lambda: prepared.append(run_step(
        "prepare (decode the JPEG copy, make the store)", [*me, "--prepare", str(home)], limits["prepare"],
        steps_log, env=env, cwd=ROOT, echo=False)))
    preparing.start()
    if not args.skip_tests and (limit := budget.allow(limits["pytest"])):
        result = report.step(run_step("pytest -m gpu", pytest_argv(args.log_dir, 1 if smoke else 4), limit, steps_log,
                                      cwd=ROOT, echo=False))
        summary = next((line for line in reversed(result.tail) if " in " in line and ("passed" in line or "skipped"
                                                                                     in line or "failed" in line)), "")
        report.data["pytest"] = {"summary": summary.strip("= "), **result.record()}
        report.say(f"pytest -m gpu: {report.data['pytest']['summary'] or '(no summary line)'}")
    preparing.join()
    report.step(prepared[0])

    gpu_side = ["trainer.device=cpu", "trainer.threads=2"] if smoke else ["trainer.device=cuda"]
    cpu_side = ["trainer.device=cpu"] + (["trainer.threads=1"] if smoke else [])
    common = [f"tracking.experiment={EXPERIMENT}", "trainer.progress=false", "diagnostics.embedding=false",
              "tracking.system_metrics_s=1"]
    # The smoke run on a laptop-sized CPU: two classes (a fifth of the images to evaluate), a few batches.
    short = ["trainer.limit_train_batches=3", "data.classes=[airplane,automobile]"] if smoke else []
    epochs = (lambda n: [f"trainer.epochs={min(n, 2)}"]) if smoke else (lambda n: [f"trainer.epochs={n}"])
    compare = ["model=cnn_simple", *epochs(4), *([] if smoke else [f"trainer.limit_train_batches={COMPARE_BATCHES}"])]
    plan = [
        ("cnn_simple GPU", "cnn_simple", [*compare, *gpu_side]),
        ("cnn_simple CPU", "cnn_simple", [*compare, *cpu_side]),
        ("compare", None, None),
        ("resnet_cifar2 GPU", "resnet_seed", ["experiment=resnet_cifar2", *epochs(5), *gpu_side]),
        ("airbench GPU", "airbench", ["experiment=airbench", "data.val_size=0", *epochs(10), *gpu_side]),
    ]
    runs: dict[str, dict] = {}
    for name, model, overrides in plan:
        wanted = limits["compare" if model is None else "run"]
        # A run cut short is a failure that tells nothing: start one only with room for it to finish.
        limit = budget.allow(wanted, at_least=None if model is None or smoke else 40)
        if limit is None:
            report.say(f"{name}: skipped, the check's time budget is spent ({budget.left():.0f} s left)")
            report.data.setdefault("skipped", []).append(name)
            report.save()
            continue
        if model is None:
            argv = [sys.executable, "-m", "cifar_sweep.commands.compare_devices", "--experiment", EXPERIMENT,
                    "--tracking-uri", store_uri(home), "--out", str(args.log_dir / "compare_devices.txt")]
            result = report.step(run_step("cifar-compare-devices", argv, limit, steps_log, env=env, cwd=ROOT,
                                          echo=False))
            text = (args.log_dir / "compare_devices.txt")
            report.data["compare"] = {"text": text.read_text() if text.exists() else None, **result.record()}
            continue
        argv = [sys.executable, "-m", "cifar_sweep.train", *overrides, *common, *short]
        result = report.step(run_step(name, argv, limit, steps_log, env=env, cwd=ROOT, echo=False))
        try:
            runs[name] = run_figures(name, model, result, home)
        except Exception as err:  # noqa: BLE001  a store that cannot be read is this run's failure, not the check's
            runs[name] = {"name": name, "model": model, "ok": False, "error": f"reading its run: {err}"}
        report.data["runs"] = list(runs.values())
        report.save()

    if (limit := budget.allow(limits["machine"])) is not None:
        report.step(run_step("machine again (peaks)", [*me, "--machine", str(machine_file), "--device", gpu], limit,
                             steps_log, cwd=ROOT, echo=False))
        machine = json.loads(machine_file.read_text()) if machine_file.exists() else machine
        report.data["machine"] = machine

    report.say("")
    peaks = [*machine.get("gpu_peaks", {}).values(), *machine.get("cpu_peaks", {}).values()]
    report.say(f"GPU check on {machine.get('gpu', 'the CPU (smoke)')}, torch {machine.get('torch')}, "
               f"{machine.get('cpu')} ({machine.get('cpu_cores')} cores); matmul peaks: "
               + "; ".join(f"{p['dtype']} on {p['device']} {p['gflops']:,.0f} GFLOP/s" for p in peaks))
    report.say(table(["run", "device, dtype", "'time' s", "train s", "1st epoch s (1st step)", "steady epoch s",
                      "eval s", "img/s", "of peak", "gap/epoch", "GPU util", "test acc"],
                     summary_rows(list(runs.values()), machine)))
    if report.data.get("compare", {}).get("text"):
        report.say("")
        report.say(report.data["compare"]["text"].rstrip())
    for r in runs.values():
        if not r["ok"]:
            report.say(f"{r['name']}: {r.get('error', 'failed')}")
    report.data["targets"] = []
    for what, met, figure in targets(runs):
        report.data["targets"].append({"target": what, "met": met, "figure": figure})
        verdict = "not judged (--smoke: the CPU stands in)" if smoke else ("met" if met else "MISSED")
        report.say(f"target {what}: {figure}: {verdict}")
    report.data["seconds"] = round(budget.spent(), 1)
    failed = [s["name"] for s in report.data["steps"] if not s["ok"]] + report.data.get("skipped", [])
    report.data["failed_steps"] = failed
    report.say(f"gpu_check: {report.data['seconds']} s in all (budget {args.budget:.0f} s); "
               + (f"failed: {', '.join(failed)}" if failed else "every step passed"))
    report.save()
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
