"""Shared by the benchmark scripts: the machine's peak, FLOPs per image, fraction of peak, results.

Not a test helper: the scripts print figures and write benchmarks/results/<name>.json; they assert
nothing. On a shared machine the wall-clock figures also measure the neighbours, so every script
records the load average around its measurements and reports medians of repeats.

Every throughput is also given as a fraction of the machine's own peak, measured in the same
process (`matmul_peak`: a 2048^2 matrix product on the CPU, 8192^2 on a GPU, in the dtype the run
computes in): images/s x training FLOPs per image (`training_flops_per_image`, counted by
torch.utils.flop_counter) / peak FLOP/s. A busy neighbour slows the peak and the run alike, so the
fraction moves less than either figure.
A run through the real command line (`run_cli`) is read back from its store through the package's
own reads (`tracking.queries`): the figures are the ones the run logged, never parsed from its output.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from cifar_sweep.data.roots import DATA_ENV, EXAMPLE_ROOT
from cifar_sweep.training import machine as machines
from cifar_sweep.training.machine import cpu_model  # noqa: F401  (gpu_check.py reads it from here)

# pandas, MLflow and torch load where they are used: bench_resnet_cifar2's child processes time an
# allocator setting that anything imported before it would disturb.

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
DEFAULT_ARCHIVE = Path(os.environ.get(DATA_ENV) or (ROOT / EXAMPLE_ROOT).resolve())
PER_EPOCH = ("val_acc", "elapsed_s", "epoch_time_s", "images_per_s", "eval_time_s")


# The machine a script's figures come from (recorded in its JSON) and that record as one line.
machine, describe = machines.describe, machines.summary_line


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A terminal table (the commands' own); floats as 1,234 from 100 up, else 0.12; NaN as —."""
    import pandas as pd

    from cifar_sweep.commands import formats

    def cell(v: object) -> str:
        return formats.number(v, ",.0f" if abs(v) >= 100 else ".2f") if isinstance(v, float) else str(v)

    frame = pd.DataFrame([[cell(v) for v in row] for row in rows], columns=list(headers))
    return formats.render_display(frame, "table", set(headers[1:])).rstrip("\n")


# -- the machine's peak and a network's cost -------------------------------------------------------


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


# -- a run through the command line, read back from its store -------------------------------------


def store_uri(home: Path) -> str:
    return f"sqlite:///{home / 'runs' / 'mlflow.db'}"


def load_archive(cache_dir: Path, **kwargs):
    """The JPEG copy through cifar_sweep's own loader (decodes once into cache_dir, then ~1 s)."""
    from cifar_sweep.data import load_folder

    if not DEFAULT_ARCHIVE.exists():
        raise SystemExit(f"{DEFAULT_ARCHIVE} not found: set {DATA_ENV} to the JPEG copy of CIFAR-10")
    return load_folder(DEFAULT_ARCHIVE, cache_dir=cache_dir, **kwargs)


def prepare_home(home: Path) -> dict:
    """A fresh CIFAR_SWEEP_HOME with its data cache and MLflow store made before anything is timed.

    A user's second run finds both: the decoded JPEG cache (the first decode takes ~10 s, see
    bench_data_load.py) and an SQLite store whose migrations have already run (several seconds).
    """
    from cifar_sweep.tracking.store import open_store

    t0 = time.perf_counter()
    load_archive(home / "runs" / "cache", val_size=0)
    t1 = time.perf_counter()
    open_store(store_uri(home), create=True)
    return {"cache_warm_s": round(t1 - t0, 2), "store_create_s": round(time.perf_counter() - t1, 2)}


def run_cli(overrides: Sequence[str], home: Path, echo: bool = True, timeout: float | None = None) -> dict:
    """`python -m cifar_sweep.train OVERRIDES` as a user runs it, with CIFAR_SWEEP_HOME=home, then the
    run it logged (`last_run_metrics`) and the process wall time (interpreter start to exit: imports,
    config, MLflow run, training, final test, artifacts). With `echo`, the run's per-epoch lines show
    as they come; a failed run prints the end of its output and stops the script."""
    env = dict(os.environ, CIFAR_SWEEP_HOME=str(home), **{DATA_ENV: str(DEFAULT_ARCHIVE)}, PYTHONUNBUFFERED="1")
    experiment = next((o.split("=", 1)[1] for o in reversed(overrides) if o.startswith("tracking.experiment=")),
                      "cifar_sweep")
    if echo:
        print("$ CIFAR_SWEEP_HOME=<tmp> python -m cifar_sweep.train " + " ".join(overrides), flush=True)
    tail: list[str] = []
    started, start = time.time(), time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "cifar_sweep.train", *overrides], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:
            tail = (tail + [line.rstrip()])[-40:]
            if echo and line.startswith('{"epoch"'):
                print("   ", line.rstrip(), flush=True)
        code = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    wall = time.perf_counter() - start
    if code != 0:
        print("\n".join(tail))
        raise SystemExit(f"the run failed with exit code {code}")
    return last_run_metrics(home, experiment, process_started=started) | {"process_wall_s": round(wall, 2)}


def last_run_metrics(home: Path, experiment: str = "cifar_sweep", process_started: float | None = None) -> dict:
    """The newest run of the experiment in home's store, as it logged itself: `summary` (every metric's
    last value: test_acc, train_time_s, first_epoch_time_s, steady_epoch_time_s, ...), `tags`, a list
    per per-epoch metric (epoch_time_s, images_per_s, ...), `steady_images_per_s` (the leaderboard's:
    the first epoch left out) and `epochs`: {"epoch", "val_acc", "time" (elapsed_s), "wall_s"} per epoch
    (wall_s: seconds since `process_started`, a time.time(), when the epoch's accuracy was logged)."""
    from cifar_sweep.analysis import histories
    from cifar_sweep.tracking import queries
    from cifar_sweep.tracking.store import open_store

    client = open_store(store_uri(home))
    run = queries.load_runs(client, queries.experiment_ids(client, [experiment])).iloc[0]  # newest first
    per_epoch = queries.load_histories(client, [run["run_id"]], PER_EPOCH)
    out = {
        "run_id": run["run_id"],
        "summary": {k[8:]: v for k, v in run.items() if k.startswith("metrics.") and v == v},
        "tags": {k[5:]: v for k, v in run.items() if k.startswith("tags.") and isinstance(v, str)},
        **{key: histories.curve(per_epoch, key)[key].tolist() for key in PER_EPOCH},
        "steady_images_per_s": float(histories.mean_excluding_warmup(per_epoch, "images_per_s").iloc[0]),
    }
    out["test_acc"] = out["summary"].get("test_acc")
    logged = histories.curve(per_epoch, "val_acc").assign(at=per_epoch.loc[per_epoch["key"] == "val_acc", "timestamp"])
    out["epochs"] = [{"epoch": int(r.step), "val_acc": round(r.val_acc, 4), "time": round(elapsed, 2),
                      "wall_s": None if process_started is None else round(r.at / 1000 - process_started, 2)}
                     for r, elapsed in zip(logged.itertuples(), out["elapsed_s"])]
    return out


def accuracy_of(record: dict) -> float:
    return record.get("test_acc", record.get("val_acc"))
