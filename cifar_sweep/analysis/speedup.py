"""Speed-ups: runs of one config paired across setups, timed per epoch and over repeats.

`pair_runs` pairs the runs of one config and seed on two setups (device, threads, device name,
compiled or eager, precision); `add_timing` times each pair from its epochs. Such a pair times
one sample of each setup: its epochs share the machine's state of that minute, so the spread of
its per-epoch ratios says little about how the speed-up would move on another day. Here each pair
is one repeat: its ratio is A's epoch time over B's (each the median of the run's epochs after
the warm-up), and the speed-up of a setup pair is the median of those ratios with a 95%
percentile-bootstrap interval over the repeats (`analysis.confidence`). Time to a target accuracy
is scored as MLPerf Training scores repeated runs: the mean, the fastest and the slowest dropped
from five repeats on.

Pandas only, torch-free: `cifar-compare-devices` reads the store and renders these rows.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Collection

import numpy as np
import pandas as pd

from cifar_sweep.analysis import confidence as conf
from cifar_sweep.analysis import histories as hist
from cifar_sweep.tracking import queries as rq

SETUP = ["device", "threads", "device_name", "compile", "precision"]
# Slower kinds first, so A is the reference and a speed-up > 1 means B is faster.
DEVICE_ORDER = {"cpu": 0, "mps": 1, "xpu": 2, "cuda": 3}


def _setup_sort_key(device, threads, device_name, compile="False", precision="") -> tuple:
    kind = str(device).split(":")[0]
    count = pd.to_numeric(threads, errors="coerce")
    # Eager before compiled, as slower kinds before faster ones: a speed-up > 1 means B is faster.
    return (DEVICE_ORDER.get(kind, 9), str(device), math.inf if pd.isna(count) else float(count), str(device_name),
            str(compile) == "True", str(precision))


def run_table(runs: pd.DataFrame) -> pd.DataFrame:
    """FINISHED, non-parent runs with the columns pairing needs (one row per run)."""
    runs = rq.drop_sweep_parents(runs)
    runs = runs[runs["status"] == rq.FINISHED]
    col = lambda name: rq.column(runs, name, None)  # noqa: E731
    return pd.DataFrame({
        "run_id": runs["run_id"], "run_name": runs["run_name"], "start_time": runs["start_time"],
        "config_hash": col("tags.config_hash"), "seed": col("params.seed"),
        "model": col("tags.model"), "data": rq.dataset_column(runs), "optimizer": col("tags.optimizer"),
        "lr": col("params.optimizer.lr"),
        "schedule": col("tags.schedule"), "epochs": col("params.trainer.epochs"),
        "batch_size": col("params.trainer.batch_size"),
        "device": col("tags.device"), "threads": col("tags.threads").fillna(col("params.trainer.threads")),
        "device_name": col("tags.device_name"), "precision": col("tags.precision"),
        "compile": col("params.trainer.compile"),
        "shared_by": pd.to_numeric(col("tags.device_shared_by"), errors="coerce"),
        "test_acc": pd.to_numeric(rq.column(runs, "metrics.test_acc"), errors="coerce"),
    }).dropna(subset=["config_hash", "seed", "device"])


def pair_runs(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (config, seed, setup A, setup B); a setup's latest run stands for it."""
    table = table.fillna({"threads": "?", "device_name": "?", "compile": "False", "precision": "?"})
    latest = table.sort_values("start_time").drop_duplicates(["config_hash", "seed", *SETUP], keep="last")
    rows = []
    for _, group in latest.groupby(["config_hash", "seed"], sort=True):
        if len(group) < 2:
            continue
        ordered = sorted(group.itertuples(index=False),
                         key=lambda r: _setup_sort_key(r.device, r.threads, r.device_name, r.compile, r.precision))
        for a, b in itertools.combinations(ordered, 2):
            row = {k: getattr(a, k) for k in ("config_hash", "seed", "model", "data", "optimizer", "lr", "schedule",
                                             "epochs", "batch_size")}
            for side, run in (("a", a), ("b", b)):
                row.update({f"{k}_{side}": getattr(run, k) for k in ("run_id", "device", "threads", "device_name",
                                                                       "precision", "compile", "shared_by", "test_acc")})
            rows.append(row)
    return pd.DataFrame(rows)


MIN_EPOCHS = 3  # steady epochs (after the warm-up one) before the spread of the ratios means anything


def _per_epoch(histories: pd.DataFrame, key: str) -> dict[str, pd.Series]:
    part = hist.curve(histories, key)
    return {run_id: group.set_index("step")[key].astype(float) for run_id, group in part.groupby("run_id")}


def _steady(a: pd.Series, b: pd.Series) -> list:
    """Epochs both runs measured, the warm-up epoch left out unless it is the only one."""
    common = sorted(set(a.index) & set(b.index))
    later = [e for e in common if e != hist.WARMUP_EPOCH]
    return later or common


def verdict(low: float, high: float, n: int) -> str:
    if n == 0 or math.isnan(low):
        return "no timing"
    if n < MIN_EPOCHS:
        return "too few epochs"
    if low > 1:
        return "B faster"
    if high < 1:
        return "A faster"
    return "no clear difference"


def pair_timing(times_a: pd.Series, times_b: pd.Series, rate_a: pd.Series, rate_b: pd.Series) -> dict:
    """Median epoch time and images/s of each side, and the per-epoch speed-up A / B with its spread."""
    epochs = _steady(times_a, times_b)
    ratios = (times_a[epochs] / times_b[epochs]).to_numpy(dtype=float) if epochs else []
    median = lambda s: float(s.median()) if len(s) else math.nan  # noqa: E731
    first = lambda s: float(s.get(hist.WARMUP_EPOCH, math.nan))  # noqa: E731
    n = len(ratios)
    low, high = (float(min(ratios)), float(max(ratios))) if n else (math.nan, math.nan)
    return {
        "epoch_time_s_a": median(times_a[epochs]) if epochs else math.nan,
        "epoch_time_s_b": median(times_b[epochs]) if epochs else math.nan,
        "images_per_s_a": median(rate_a[[e for e in epochs if e in rate_a.index]]),
        "images_per_s_b": median(rate_b[[e for e in epochs if e in rate_b.index]]),
        "first_epoch_time_s_a": first(times_a), "first_epoch_time_s_b": first(times_b),
        # Ratio of epoch times, what a user waits for: > 1 means B is faster.
        "speedup": float(statistics.median(ratios)) if n else math.nan, "speedup_min": low, "speedup_max": high,
        "compared_epochs": n, "verdict": verdict(low, high, n),
    }


def add_timing(pairs: pd.DataFrame, histories: pd.DataFrame) -> pd.DataFrame:
    times, rates = _per_epoch(histories, "epoch_time_s"), _per_epoch(histories, "images_per_s")
    empty = pd.Series(dtype=float)
    rows = [pair_timing(times.get(a, empty), times.get(b, empty), rates.get(a, empty), rates.get(b, empty))
            for a, b in zip(pairs["run_id_a"], pairs["run_id_b"])]
    pairs = pd.concat([pairs.reset_index(drop=True), pd.DataFrame(rows, index=range(len(rows)))], axis=1)
    return pairs.sort_values(["model", "config_hash", "seed"], kind="stable").reset_index(drop=True)


def orient(pairs: pd.DataFrame, a_ids: Collection[str]) -> pd.DataFrame:
    """Swap the sides of the pairs whose B run is one of `a_ids`: the runs a user launched as A stay A."""
    flip = pairs["run_id_b"].isin(set(a_ids))
    if not flip.any():
        return pairs
    sided = [c[:-2] for c in pairs.columns if c.endswith("_a") and f"{c[:-2]}_b" in pairs.columns]
    swap = {**{f"{k}_a": f"{k}_b" for k in sided}, **{f"{k}_b": f"{k}_a" for k in sided}}
    out = pairs.copy()
    out.loc[flip] = pairs.loc[flip].rename(columns=swap)[pairs.columns].to_numpy()
    return out


# -- repeats: the per-seed pairs of one setup pair reduced to one row ---------------------------------

GROUP = ["config_hash", *(f"{k}_a" for k in SETUP), *(f"{k}_b" for k in SETUP)]
DESCRIBE = ["model", "data", "optimizer", "lr", "schedule", "epochs", "batch_size"]


def repeat_verdict(n: int, low: float, high: float) -> str:
    if n == 1:
        return "single sample"
    if n == 0 or math.isnan(low):
        return "no timing"
    if low > 1:
        return "B faster"
    if high < 1:
        return "A faster"
    return "no clear difference"


def _median(values) -> float:
    values = [v for v in values if not pd.isna(v)]
    return float(np.median(values)) if values else math.nan


def _side(group: pd.DataFrame, side: str) -> dict:
    times = group[f"epoch_time_s_{side}"].astype(float)
    out = {
        f"epoch_time_s_{side}": _median(times),
        f"spread_{side}": conf.relative_iqr(times),
        f"images_per_s_{side}": _median(group[f"images_per_s_{side}"]),
        f"test_acc_{side}": float(pd.to_numeric(group[f"test_acc_{side}"], errors="coerce").mean()),
        f"shared_by_{side}": float(pd.to_numeric(group[f"shared_by_{side}"], errors="coerce").max()),
        f"run_ids_{side}": list(group[f"run_id_{side}"]),
    }
    if f"target_time_s_{side}" in group:
        reached = group[f"target_time_s_{side}"].dropna()
        out[f"target_time_s_{side}"] = conf.mlperf_mean(reached)
        out[f"target_reached_{side}"] = len(reached)
    return out


def summarize(pairs: pd.DataFrame) -> pd.DataFrame:
    """One row per (config, setup A, setup B) from the per-seed pairs (`compare_devices.compare`'s
    rows): n repeats, each side's median epoch time and its spread (IQR / median), the speed-up and
    its 95% interval, a verdict; with the pairs' `target_time_s_a`/`_b` (seconds to a target
    accuracy, NaN: never reached), each side's MLPerf-style time and how many runs reached it."""
    rows = []
    for _, group in pairs.groupby(GROUP, sort=False, dropna=False):
        group = group.sort_values("seed", key=lambda s: pd.to_numeric(s, errors="coerce"), kind="stable")
        ratios = (group["epoch_time_s_a"].astype(float) / group["epoch_time_s_b"].astype(float)).dropna()
        low, high = conf.bootstrap_interval(ratios)
        first = group.iloc[0]
        row = {k: first[k] for k in (*DESCRIBE, *GROUP)}
        row.update({"n": len(ratios), "seeds": list(group["seed"]), "speedup": _median(ratios),
                    "speedup_ci_low": low, "speedup_ci_high": high, "verdict": repeat_verdict(len(ratios), low, high)})
        for side in ("a", "b"):
            row.update(_side(group, side))
        rows.append(row)
    return pd.DataFrame(rows)


def noisy_sides(row) -> list[str]:
    """'A 14%' for each side whose repeats spread more than `confidence.SPREAD_LIMIT`."""
    return [f"{side.upper()} {100 * getattr(row, f'spread_{side}'):.0f}%" for side in ("a", "b")
            if getattr(row, "n", 0) >= 2 and getattr(row, f"spread_{side}") > conf.SPREAD_LIMIT]
