"""How long `data=folder` takes on the real JPEG copy: first load (decode + cache) and cached loads.

    python benchmarks/bench_data_load.py [--archive PATH] [--repeats 3]

Uses a fresh temporary cache folder, prints a table and writes benchmarks/results/data_load.json.
Targets: first load of the 60,000 JPEGs at most 10 s, cached loads at most 1 s.
CPU seconds (this process + decode workers) are reported beside wall time: on a shared machine the
wall time also measures the neighbours.
"""

from __future__ import annotations

import argparse
import importlib
import resource
import statistics
import tempfile
import time
from pathlib import Path

import _common as common


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(fn):
    wall, cpu = time.perf_counter(), cpu_seconds()
    result = fn()
    return result, time.perf_counter() - wall, cpu_seconds() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, default=common.DEFAULT_ARCHIVE)
    parser.add_argument("--repeats", type=int, default=3, help="cached loads to time (median reported)")
    args = parser.parse_args()
    if not args.archive.exists():
        raise SystemExit(f"{args.archive} not found; pass --archive PATH (the JPEG copy of CIFAR-10)")

    info = common.machine()
    _, import_s, _ = timed(lambda: importlib.import_module("cifar_sweep.data.folder"))  # torch, numpy
    from cifar_sweep.data import load_folder

    # The loader imports its codec only on a cache miss: that import is timed apart from the rows.
    _, codec_s, _ = timed(lambda: importlib.import_module("torchvision.io"))
    with tempfile.TemporaryDirectory(prefix="bench-data-") as cache:
        bundle, first_s, first_cpu = timed(lambda: load_folder(args.archive, cache_dir=cache))
        cached = [timed(lambda: load_folder(args.archive, cache_dir=cache)) for _ in range(args.repeats)]
    assert all(b.source.endswith("(cache hit)") for b, _, _ in cached), [b.source for b, _, _ in cached]
    n = len(bundle.train) + len(bundle.val) + len(bundle.test)
    cached_s = statistics.median(s for _, s, _ in cached)
    cached_cpu = statistics.median(c for _, _, c in cached)

    print(f"{args.archive} ({n:,} images); {common.describe(info)}")
    print(common.table(["", "wall s", "cpu s", "images/s"], [
        ("first load (decode + write cache)", first_s, first_cpu, n / first_s),
        (f"cached load (median of {args.repeats})", cached_s, cached_cpu, n / cached_s)]))
    print(f"(not in the rows: import torch + cifar_sweep.data {import_s:.2f} s; import torchvision.io {codec_s:.2f} s)")
    print(f"source: {bundle.source}")
    common.write_result("data_load", {
        "machine": info, "archive": str(args.archive), "images": n,
        "first_load_s": round(first_s, 3), "first_load_cpu_s": round(first_cpu, 3),
        "first_load_images_per_s": round(n / first_s),
        "cached_load_s": round(cached_s, 3), "cached_load_cpu_s": round(cached_cpu, 3),
        "cached_loads_s": [round(s, 3) for _, s, _ in cached], "cached_load_images_per_s": round(n / cached_s),
        "import_s": round(import_s, 3), "torchvision_io_import_s": round(codec_s, 3),
        "torchvision": importlib.import_module("torchvision").__version__,
        "targets": {"first_load_s": 10, "cached_load_s": 1},
    })


if __name__ == "__main__":
    main()
