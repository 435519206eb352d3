"""What machine this is: the CPU's model, vendor and flags from /proc/cpuinfo, cores, memory.

Torch-free, so a report or a benchmark's header can describe the machine without loading torch.
`device.py` decides `precision=auto` from these flags; the benchmarks print and record them.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import re
import time
from functools import lru_cache
from importlib import metadata
from pathlib import Path

# The flags that say what the CPU's matrix units can do in low precision (AMX tiles, AVX-512 BF16
# dot products, VNNI): what a bf16 run's speed depends on.
MATRIX_FLAG_PREFIXES = ("amx", "avx512_bf16", "avx512_vnni")
# What `trainer.precision` may ask of a machine (here, torch-free, so the config check names them
# before torch loads; `device.resolve_precision` decides what `auto` becomes).
PRECISIONS = ("auto", "fp32", "tf32", "bf16", "fp16")


@lru_cache(maxsize=1)
def cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is no such file)."""
    try:
        return parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        return {}


def parse_cpuinfo(text: str) -> dict[str, str]:
    """`key: value` lines of the first processor's block (every processor repeats its model and flags)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_flags() -> frozenset[str]:
    return frozenset(cpuinfo().get("flags", "").split())


def cpu_vendor() -> str:
    return cpuinfo().get("vendor_id", "")


def cpu_model() -> str:
    return cpuinfo().get("model name") or platform.processor() or platform.machine()


def matrix_flags() -> list[str]:
    return sorted(f for f in cpu_flags() if f.startswith(MATRIX_FLAG_PREFIXES))


def cores() -> int:
    """Cores this process may run on (affinity-aware: a job pinned to 2 cores sees 2)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def memory_gib() -> float:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return float("nan")


def torch_version() -> str:
    """torch's full version with its build (`2.14.1+cu130`), read without importing torch.

    The wheel's metadata drops the build suffix that says which CUDA it was built for, so the
    version is read from torch's own `version.py` first.
    """
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return "not installed"
    try:
        found = re.search(r"^__version__ = '([^']+)'", Path(spec.origin).with_name("version.py").read_text(), re.M)
    except OSError:
        found = None
    return found.group(1) if found else metadata.version("torch")


def describe() -> dict:
    """The machine as a benchmark or a reproduction records it beside its figures."""
    return {
        "cpu": cpu_model(), "cores": cores(), "matrix_flags": matrix_flags(), "memory_gib": memory_gib(),
        "python": platform.python_version(), "torch": torch_version(),
        "load_average_at_start": round(os.getloadavg()[0], 2), "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def summary_line(info: dict) -> str:
    """One line of `describe()`'s record, for a report's header."""
    flags = ", ".join(info["matrix_flags"]) or "no bf16/AMX flags"
    return (f"{info['cpu']}, {info['cores']} cores ({flags}), {info['memory_gib']} GiB; torch {info['torch']}; "
            f"load average {info['load_average_at_start']} at start")
