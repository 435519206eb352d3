"""Loop speed: a tutorial-style training loop against cifar_sweep's engine, same model, same steps.

    .venv/bin/python benchmarks/bench_loop.py [--quick] [--models cnn_simple resnet_seed] [--repeats 3]

For `cnn_simple` and `resnet_seed` (10 classes), in one process, one after the other:

  (a) tutorial: torchvision ImageFolder over the extracted JPEG tree (extracted once into a temporary
      folder), RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize, DataLoader
      (batch 128, shuffle, num_workers=2), fp32, NCHW; the plain PyTorch step.
  (b) cifar_sweep: the dataset as uint8 in memory (data=folder's cache), TrainBatches with the same
      augmentation (Augment: crop 4 + flip), `engine.train_one_epoch`, `setup_hardware` with
      precision auto (bf16 autocast on this CPU), channels-last.

An intermediate row says what the data path alone buys: the engine in fp32 NCHW. The rows alternate
within each repeat. `setup_hardware` runs first: its allocator setting (glibc keeps freed memory) is
process-wide and cannot be undone, so every row, the tutorial loop included, runs with it;
`--no-allocator` leaves glibc's defaults for the whole process (run both to see what it buys).
Same optimizer per model (Adam 1e-3 for cnn_simple, SGD 0.1 momentum 0.9 for resnet_seed), same
batch size; warm-up steps are not timed. Images/s are medians over the repeats; ratio = (b) / (a).
Images per CPU-second (CPU time of the training process and, for (a), its DataLoader workers) are
printed beside: on a machine shared with other work they say more than wall time, because (a) runs
three processes and so takes a larger share of a busy machine than (b)'s one.

One difference on purpose: Augment's zero padding pads the standardised batch (0 = the mean colour),
torchvision's pads the raw image with black before Normalize. The cost is the same.
Each images/s figure is also a fraction of the machine's peak: images/s x training FLOPs per image
(torch.utils.flop_counter) / the 2048^2 matmul rate in the dtype the row computes in (fp32 rows:
fp32; the engine row: the precision `auto` chose), measured in this process before and after the
rows (the higher of the two counts; all are printed, bf16 and fp32 both).
Writes benchmarks/results/loop.json. Targets: (b)/(a) >= 5 for cnn_simple, >= 3 for resnet_seed.
"""

from __future__ import annotations

import argparse
import itertools
import os
import tarfile
import tempfile
import time
from pathlib import Path

import _common as common
import torch
import torch.nn.functional as F

TARGETS = {"cnn_simple": 5.0, "resnet_seed": 3.0}
STEPS = {"cnn_simple": 80, "resnet_seed": 24}   # timed steps per row (x2 for the fast rows)
QUICK_STEPS = {"cnn_simple": 30, "resnet_seed": 8}
BATCH = 128
WARMUP = 10  # untimed steps per row: DataLoader start-up, oneDNN kernel creation, the heap growing to size


def build_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return common.build_model(name)


def torch_optimizer(name: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The tutorial loop's optimizer: torch.optim as a tutorial writes it."""
    if name == "cnn_simple":
        return torch.optim.Adam(model.parameters(), lr=1e-3)
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def project_optimizer(name: str, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The same optimizer through cifar_sweep's builders (conf/optimizer/*.yaml)."""
    from cifar_sweep.training import optim

    if name == "cnn_simple":
        return optim.adam(model, lr=1e-3)
    return optim.sgd(model, lr=0.1, momentum=0.9)


def extract_train_tree(archive: Path, dest: Path) -> Path:
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.lstrip("./").startswith("train/")]
        tar.extractall(dest, members=members, filter="data")
    return dest / "train"


def _cpu_seconds_of(pids: list[int]) -> float:
    """User + system CPU seconds of other processes (the DataLoader workers)."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            total += sum(psutil.Process(pid).cpu_times()[:2])
        except psutil.Error:  # a worker that has already exited
            pass
    return total


def tutorial_loop(name: str, train_dir: Path, mean, std, steps: int, warmup: int) -> tuple[float, float]:
    """(a) images/s and images per CPU-second (this process + its 2 workers) of the classic loop.

    DataLoader workers start (and stop) inside each call.
    """
    import torchvision
    import torchvision.transforms as T
    from torch.utils.data import DataLoader

    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
    dataset = torchvision.datasets.ImageFolder(str(train_dir), transform=transform)
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=2)
    model = build_model(name)
    optimizer = torch_optimizer(name, model)
    model.train()
    it = iter(loader)
    workers = [w.pid for w in getattr(it, "_workers", [])]
    start = cpu0 = None
    for i in range(warmup + steps):
        if i == warmup:
            start, cpu0 = time.perf_counter(), time.process_time() + _cpu_seconds_of(workers)
        x, y = next(it)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - start
    cpu = time.process_time() + _cpu_seconds_of(workers) - cpu0
    del it  # stops the workers before the next row
    return steps * BATCH / seconds, steps * BATCH / cpu


def engine_loop(name: str, bundle, hw, channels_last: bool, steps: int, warmup: int) -> tuple[float, float]:
    """(b) images/s and images per CPU-second of cifar_sweep's engine; `hw` decides the precision."""
    from cifar_sweep.data.augment import Augment
    from cifar_sweep.data.batches import Standardize, TrainBatches
    from cifar_sweep.training.engine import train_one_epoch
    from cifar_sweep.training.schedules import constant

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model(name).to(memory_format=fmt)
    optimizer = project_optimizer(name, model)
    scheduler = constant(optimizer, total_steps=warmup + steps)
    standardize = Standardize(bundle.mean, bundle.std, hw.device, channels_last)
    batches = TrainBatches(bundle.train.images, bundle.train.labels, BATCH, standardize,
                           Augment(crop_padding=4, pad_mode="zeros", flip=True), torch.Generator().manual_seed(0))
    it = iter(batches)
    train_one_epoch(model, itertools.islice(it, warmup), optimizer, scheduler, hw, 0)
    cpu0 = time.process_time()
    stats = train_one_epoch(model, itertools.islice(it, steps), optimizer, scheduler, hw, 0)
    return stats.images_per_s, stats.images / (time.process_time() - cpu0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps, one repeat")
    parser.add_argument("--models", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-allocator", action="store_true",
                        help="leave glibc's allocator defaults (setup_hardware's keep_freed_memory off), every row")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of both loops' training process (default: every core; the tutorial's "
                             "2 DataLoader workers come on top). 1 gives steadier figures on a busy machine")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    steps = QUICK_STEPS if args.quick else STEPS

    from cifar_sweep.training import device

    info = common.machine()
    print(common.describe(info))
    if args.no_allocator:  # everything setup_hardware does but the allocator setting
        torch.set_num_threads(args.threads or device.cpu_share())
        cpu = torch.device("cpu")
        hw = device.Hardware(cpu, device.resolve_precision("auto", cpu), torch.get_num_threads(), device.device_name(cpu))
    else:
        hw = device.setup_hardware("cpu", "auto", args.threads)
    fp32 = device.Hardware(hw.device, "fp32", hw.threads, hw.name)
    info["allocator"] = "glibc defaults" if args.no_allocator else "keep_freed_memory"
    flops = {m: common.training_flops_per_image(build_model(m)) for m in args.models}
    dtypes = sorted({"bf16", "fp32", hw.precision})
    peaks = [common.matmul_peak("cpu", d) for d in dtypes]

    with tempfile.TemporaryDirectory(prefix="bench-loop-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        bundle = common.load_archive(tmp / "cache", val_size=0)
        train_dir = extract_train_tree(common.DEFAULT_ARCHIVE, tmp / "tree")
        print(f"setup (decode into a fresh cache, extract the JPEG tree): {time.perf_counter() - t0:.1f} s")
        mean = [m / 255 for m in bundle.mean]
        std = [s / 255 for s in bundle.std]

        keys = ("tutorial", "engine_fp32", "engine")
        rows = {m: {k: [] for k in keys} for m in args.models}
        per_cpu = {m: {k: [] for k in keys} for m in args.models}

        def record(m: str, k: str, result: tuple[float, float]) -> None:
            rows[m][k].append(result[0])
            per_cpu[m][k].append(result[1])

        loads = [os.getloadavg()[0]]
        for rep in range(repeats):  # the rows alternate, so a change in machine load hits them alike
            for m in args.models:
                n = steps[m]
                record(m, "tutorial", tutorial_loop(m, train_dir, mean, std, n, warmup=WARMUP))
                record(m, "engine_fp32", engine_loop(m, bundle, fp32, False, n, warmup=WARMUP))
                record(m, "engine", engine_loop(m, bundle, hw, True, 2 * n, warmup=WARMUP))
                print(f"  repeat {rep + 1}/{repeats} {m}: " + ", ".join(f"{k} {v[-1]:,.0f}" for k, v in rows[m].items()),
                      flush=True)
        loads.append(os.getloadavg()[0])
        peaks += [common.matmul_peak("cpu", d) for d in dtypes]
    peak = {d: max((p for p in peaks if p["dtype"] == d), key=lambda p: p["gflops"]) for d in dtypes}
    print(f"peaks: {common.peak_line(peaks)} (before / after the rows)")
    row_dtype = {"tutorial": "fp32", "engine_fp32": "fp32", "engine": hw.precision}

    labels = {
        "tutorial": "(a) tutorial: ImageFolder+PIL+DataLoader(2 workers), fp32 NCHW",
        "engine_fp32": "    engine, fp32 NCHW (in-memory uint8 batches, batched augment)",
        "engine": f"(b) engine as run: {hw.precision}{' autocast' if hw.precision != 'fp32' else ''}, channels-last",
    }
    results = {}
    for m in args.models:
        med = {k: common.median(v) for k, v in rows[m].items()}
        cpu_med = {k: common.median(v) for k, v in per_cpu[m].items()}
        base = med["tutorial"]
        frac = {k: common.fraction_of_peak(v, flops[m], peak[row_dtype[k]]) for k, v in med.items()}
        table_rows = [(labels[k], med[k], med[k] / base, " ".join(f"{x:,.0f}" for x in rows[m][k]),
                       cpu_med[k], cpu_med[k] / cpu_med["tutorial"], f"{frac[k]:.0%}") for k in labels]
        print(f"\n{m}: {steps[m]} timed steps of batch {BATCH} for (a) and fp32 ({2 * steps[m]} for the bf16 rows), "
              f"median of {repeats}; {flops[m] / 1e6:.0f} MFLOP per training image")
        print(common.table(["loop", "images/s", "x (a)", "repeats", "img/CPU-s", "x (a)", "of peak"], table_rows))
        ratio = med["engine"] / base
        cpu_ratio = cpu_med["engine"] / cpu_med["tutorial"]
        met = ratio >= TARGETS[m]
        print(f"ratio (b)/(a) = {ratio:.2f}  (target >= {TARGETS[m]:g}: {'met' if met else 'MISSED'}); "
              f"per CPU-second {cpu_ratio:.2f}")
        results[m] = {"images_per_s": {k: round(v, 1) for k, v in med.items()},
                      "images_per_cpu_s": {k: round(v, 1) for k, v in cpu_med.items()},
                      "ratio_per_cpu_s": round(cpu_ratio, 2),
                      "repeats": {k: [round(x, 1) for x in v] for k, v in rows[m].items()},
                      "ratio_b_over_a": round(ratio, 2), "target": TARGETS[m], "met": met,
                      "training_flops_per_image": flops[m], "fraction_of_peak": {k: round(v, 3) for k, v in frac.items()},
                      "timed_steps": {"tutorial": steps[m], "engine_fp32": steps[m], "engine": 2 * steps[m]}}
    print(f"load average: {loads[0]:.1f} at start, {loads[1]:.1f} at end (2 cores; other work on the machine "
          "slows every row, the ratio less)")
    print(f"allocator: {info['allocator']} (process-wide, every row)")
    common.write_result("loop_no_allocator" if args.no_allocator else "loop", {
        "machine": info, "precision": hw.precision, "threads": hw.threads, "batch_size": BATCH, "quick": args.quick,
        "load_average": [round(x, 2) for x in loads], "peaks": peaks, "models": results})


if __name__ == "__main__":
    main()
