"""Shared by the benchmark scripts: the machine's description, tables, JSON results, data setup.

Not a test helper: the scripts print figures and write benchmarks/results/<name>.json; they assert
nothing. On a shared machine the wall-clock figures also measure the neighbours, so every script
records the load average around its measurements and reports medians of repeats.

Every throughput is also given as a fraction of the machine's own peak, measured in the same
process (`matmul_peak`: a bf16 2048^2 matrix product on the CPU, 8192^2 on a GPU, in the dtype the
run computes in): images/s x training FLOPs per image (`training_flops_per_image`, counted by
torch.utils.flop_counter) / peak FLOP/s. A busy neighbour slows the peak and the run alike, so the
fraction moves less than either figure.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
DEFAULT_ARCHIVE = Path(os.environ.get("CIFAR_SWEEP_DATA", ROOT.parent / "shared/datasets/cifar10-jpeg.tar.gz"))

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                return sorted(f for f in flags if f.startswith(("amx", "avx512_bf16", "avx512_vnni")))
    except OSError:
        pass
    return []


def machine() -> dict:
    import torch

    return {
        "cpu": cpu_model(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "matrix_flags": cpu_flags(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average_at_start": round(os.getloadavg()[0], 2),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def describe(info: dict) -> str:
    flags = ", ".join(info["matrix_flags"]) or "no bf16/AMX flags"
    return (f"{info['cpu']}, {info['cores']} cores ({flags}), {info['memory_gib']} GiB; torch {info['torch']}; "
            f"load average {info['load_average_at_start']} at start")


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = lambda items: "  ".join(s.rjust(w) if i else s.ljust(w) for i, (s, w) in enumerate(zip(items, widths)))  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if value != value:
            return "-"
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"
    return str(value)


def matmul_peak(device: str = "cpu", dtype: str = "bf16", size: int | None = None, repeats: int = 5) -> dict:
    """FLOP/s of a square matrix product: the ceiling a network's convolutions and matmuls work under.

    CPU: 2048^2 (the size the CPU's figure in the spec was taken at); GPU: 8192^2 (a 2048^2 product
    is over in microseconds there, and launch overhead would hide the peak). The median of
    `repeats` timed batches after a warm-up; CUDA is timed with events.
    """
    import torch

    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    dev = torch.device(device)
    n = size or (8192 if dev.type == "cuda" else 2048)
    gen = torch.Generator(device=dev).manual_seed(0)
    a = torch.randn(n, n, device=dev, dtype=dtypes[dtype], generator=gen)
    b = torch.randn(n, n, device=dev, dtype=dtypes[dtype], generator=gen)
    inner = 10 if dev.type == "cuda" else 3
    for _ in range(2):
        a @ b
    rates = []
    for _ in range(repeats):
        if dev.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                a @ b
            end.record()
            end.synchronize()
            seconds = start.elapsed_time(end) / 1000
        else:
            t = time.perf_counter()
            for _ in range(inner):
                a @ b
            seconds = time.perf_counter() - t
        rates.append(inner * 2 * n**3 / seconds)
    return {"device": str(dev), "dtype": dtype, "size": n, "gflops": round(median(rates) / 1e9, 1),
            "gflops_repeats": [round(r / 1e9, 1) for r in rates], "threads": torch.get_num_threads()}


def training_flops_per_image(model, image_shape: Sequence[int] = (3, 32, 32), batch: int = 8) -> float:
    """Forward + backward FLOPs of one training image (convolutions and matmuls), by FlopCounterMode.

    Runs on a deep copy on the CPU in fp32 (the count does not depend on the dtype), in training
    mode, through cross-entropy on random labels; the model passed in is left as it was.
    """
    import copy

    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    clone = copy.deepcopy(model).cpu().float().train()
    x = torch.randn(batch, *image_shape)
    with FlopCounterMode(display=False) as counter:
        logits = clone(x)
        F.cross_entropy(logits, torch.zeros(batch, dtype=torch.long)).backward()
    return counter.get_total_flops() / batch


def build_model(name: str, num_classes: int = 10):
    """conf/model/<name>.yaml instantiated, as a run builds it."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    return instantiate(OmegaConf.load(ROOT / "conf" / "model" / f"{name}.yaml"), num_classes=num_classes)


def peak_for(peaks: dict[str, dict], precision: str | None) -> dict:
    """The peak of the dtype a run computed in (its `precision` tag); where that dtype was not measured,
    the highest peak measured, so a fraction of peak is never overstated."""
    return peaks.get(precision) or max(peaks.values(), key=lambda p: p["gflops"])


def fraction_of_peak(images_per_s: float, flops_per_image: float, peak: dict) -> float:
    return images_per_s * flops_per_image / (peak["gflops"] * 1e9) if peak and peak.get("gflops") else float("nan")


def peak_line(peaks: Sequence[dict]) -> str:
    return "; ".join(f"{p['dtype']} {p['size']}^2 matmul on {p['device']} ({p['threads']} threads): "
                     f"{p['gflops']:,.0f} GFLOP/s" for p in peaks)


def write_result(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")
    return path


def load_archive(cache_dir: Path, **kwargs):
    """The JPEG copy through cifar_sweep's own loader (decodes once into cache_dir, then ~1 s)."""
    from cifar_sweep.data import load_folder

    if not DEFAULT_ARCHIVE.exists():
        raise SystemExit(f"{DEFAULT_ARCHIVE} not found: set CIFAR_SWEEP_DATA to the JPEG copy of CIFAR-10")
    return load_folder(DEFAULT_ARCHIVE, cache_dir=cache_dir, **kwargs)


def prepare_home(home: Path) -> dict:
    """A fresh CIFAR_SWEEP_HOME with its data cache and MLflow store made before anything is timed.

    A user's second run finds both: the decoded JPEG cache (the first decode takes ~10 s, see
    bench_data_load.py) and an SQLite store whose migrations have already run (several seconds).
    """
    from mlflow.tracking import MlflowClient

    runs = home / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    load_archive(runs / "cache", val_size=0)
    t1 = time.perf_counter()
    MlflowClient(tracking_uri=f"sqlite:///{runs / 'mlflow.db'}").search_experiments()
    t2 = time.perf_counter()
    return {"cache_warm_s": round(t1 - t0, 2), "store_create_s": round(t2 - t1, 2)}


def run_cli(overrides: Sequence[str], home: Path, echo: bool = True, timeout: float | None = None) -> dict:
    """`python -m cifar_sweep.train OVERRIDES` as a user runs it, with CIFAR_SWEEP_HOME=home.

    Returns the per-epoch JSON lines the run prints ({"epoch", "test_acc"|"val_acc", "time"}, time in
    seconds since the run's start), the final test accuracy from its last log line, and the process
    wall time (interpreter start to exit: imports, config, MLflow run, training, final test, artifacts).
    """
    import re
    import subprocess

    env = dict(os.environ, CIFAR_SWEEP_HOME=str(home), CIFAR_SWEEP_DATA=str(DEFAULT_ARCHIVE), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "cifar_sweep.train", *overrides]
    if echo:
        print("$ CIFAR_SWEEP_HOME=<tmp> python -m cifar_sweep.train " + " ".join(overrides), flush=True)
    epochs, tail = [], []
    test_acc = None
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:
            tail = (tail + [line.rstrip()])[-40:]
            stripped = line.strip()
            if stripped.startswith("{") and '"epoch"' in stripped:
                record = json.loads(stripped)
                record["wall_s"] = round(time.perf_counter() - start, 2)  # since the interpreter started
                epochs.append(record)
                if echo:
                    print("   ", json.dumps(record), flush=True)
            match = re.search(r"test accuracy ([0-9.]+)", line)
            if match:
                test_acc = float(match.group(1))
        code = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    wall = time.perf_counter() - start
    if code != 0:
        print("\n".join(tail))
        raise SystemExit(f"the run failed with exit code {code}")
    return {"epochs": epochs, "test_acc": test_acc, "process_wall_s": round(wall, 2)}


def accuracy_of(record: dict) -> float:
    return record.get("test_acc", record.get("val_acc"))


def last_run_metrics(home: Path, experiment: str = "cifar_sweep") -> dict:
    """Per-epoch metrics (epoch_time_s, images_per_s, eval_time_s, ...) of the newest run in the store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'runs' / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    run = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]
    out = {"run_id": run.info.run_id, "summary": dict(run.data.metrics), "tags": dict(run.data.tags)}
    for key in ("epoch_time_s", "images_per_s", "eval_time_s", "elapsed_s", "val_acc"):
        out[key] = [m.value for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]
    return out
