"""`cifar-compare-devices`: the same training job on two devices or thread counts, side by side.

Two FINISHED runs pair when their `config_hash` (resolved config without seed, device, threads)
and their seed are equal but their setup (device, thread count, device name, compiled or eager,
resolved precision) differs: a compiled run and an eager one of the same config pair like two
devices do, and a device's compiled runs never stand in for its eager ones. For each
pair: the median epoch time and images/s of the steady epochs (epoch 0, which pays the warm-up and
any compile, is left out when there are later ones), the speed-up of B over A as the median of the
per-epoch ratios with their min-max spread, and the test accuracy of both, so a faster setup that
learned worse shows. A verdict needs at least MIN_EPOCHS steady epochs; with fewer, a timing is a
sample of noise, and the table says so instead of naming a winner. A run whose GPU was shared with
other jobs of its sweep (`device_shared_by` > 1: more parallel jobs than GPUs) timed the contention
too: its device reads `cuda:0 (2 jobs)`, and a note under the table says its speed is not the device's.

Torch-free, like the leaderboard. Never imports another command: the shell and `analysis` only.
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics

import pandas as pd

from cifar_sweep.analysis import histories as hist
from cifar_sweep.commands import formats as tf
from cifar_sweep.commands import shell
from cifar_sweep.tracking import queries as rq
from cifar_sweep.tracking.store import open_store

PROG = "cifar-compare-devices"

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
        "model": col("tags.model"), "optimizer": col("tags.optimizer"), "lr": col("params.optimizer.lr"),
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
            row = {k: getattr(a, k) for k in ("config_hash", "seed", "model", "optimizer", "lr", "schedule", "epochs",
                                             "batch_size")}
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


def compare(tracking_uri: str | None, experiment: str, model: str | None = None,
            data: str | None = None) -> pd.DataFrame:
    client = open_store(tracking_uri)
    runs = rq.load_runs(client, rq.experiment_ids(client, [experiment]))
    if runs.empty:
        raise rq.StoreError(f"experiment {experiment!r} has no runs yet")
    if data and not (rq.dataset_column(runs) == data).any():
        known = sorted({str(v) for v in rq.dataset_column(runs).dropna() if v})
        raise rq.StoreError(f"no runs on data {data!r} in {experiment!r}; its runs used: "
                            f"{', '.join(known) or 'no dataset tag'}")
    runs = rq.filter_runs(runs, model=model, data=data)
    table = run_table(runs)
    pairs = pair_runs(table)
    if pairs.empty:
        finished = int((runs["status"] == rq.FINISHED).sum())
        raise rq.StoreError(
            f"no pairs in {experiment!r} ({finished} finished runs, {len(table)} of them with config_hash, seed "
            "and device): pairing needs two runs with the "
            "same config_hash and seed on a different device or thread count, e.g. "
            "`cifar-sweep -m trainer.threads=1,2` or `cifar-sweep -m trainer.device=cpu,cuda`"
        )
    ids = list(pairs["run_id_a"]) + list(pairs["run_id_b"])
    return add_timing(pairs, rq.load_histories(client, ids, ["epoch_time_s", "images_per_s"]))


# -- rendering ------------------------------------------------------------------------------------

NUMERIC = {"seed", "lr", "epochs", "threads A", "threads B", "epoch s A", "epoch s B", "img/s A", "img/s B",
           "speed-up", "min-max", "n", "test_acc A %", "test_acc B %"}
CSV_COLUMNS = ["model", "optimizer", "lr", "schedule", "epochs", "batch_size", "seed", "config_hash",
               "device_a", "threads_a", "device_name_a", "precision_a", "compile_a", "shared_by_a", "device_b",
               "threads_b", "device_name_b", "precision_b", "compile_b", "shared_by_b", "epoch_time_s_a", "epoch_time_s_b", "first_epoch_time_s_a", "first_epoch_time_s_b",
               "images_per_s_a", "images_per_s_b", "speedup", "speedup_min", "speedup_max", "compared_epochs",
               "verdict", "test_acc_a", "test_acc_b", "run_id_a", "run_id_b"]


def _ratio(v) -> str:
    return tf.MISSING if tf.is_missing(v) else f"{v:.2f}x"


def shared(value) -> int:
    """Jobs that shared a run's device (1: it had the device to itself, as far as it knows)."""
    return 1 if tf.is_missing(value) else max(int(value), 1)


def _device_text(device, shared_by) -> str:
    text = tf.MISSING if tf.is_missing(device) else str(device)
    return text if shared(shared_by) == 1 else f"{text} ({shared(shared_by)} jobs)"


def _precision_text(precision, compile) -> str:
    text = tf.MISSING if tf.is_missing(precision) else str(precision)
    return f"{text}+compile" if str(compile) == "True" else text


def display_frame(pairs: pd.DataFrame) -> pd.DataFrame:
    text = lambda v: tf.MISSING if tf.is_missing(v) else str(v)  # noqa: E731
    spread = [tf.MISSING if tf.is_missing(lo) else f"{lo:.2f}-{hi:.2f}x"
              for lo, hi in zip(pairs["speedup_min"], pairs["speedup_max"])]
    return pd.DataFrame({
        "model": pairs["model"].map(text), "optimizer": pairs["optimizer"].map(text), "lr": pairs["lr"].map(text),
        "schedule": pairs["schedule"].map(text), "epochs": pairs["epochs"].map(text), "seed": pairs["seed"].map(text),
        "device A": [_device_text(d, n) for d, n in zip(pairs["device_a"], pairs["shared_by_a"])],
        "threads A": pairs["threads_a"].map(text),
        "prec A": [_precision_text(p, c) for p, c in zip(pairs["precision_a"], pairs["compile_a"])],
        "device B": [_device_text(d, n) for d, n in zip(pairs["device_b"], pairs["shared_by_b"])],
        "threads B": pairs["threads_b"].map(text),
        "prec B": [_precision_text(p, c) for p, c in zip(pairs["precision_b"], pairs["compile_b"])],
        "epoch s A": [tf.number(v, ".2f") for v in pairs["epoch_time_s_a"]],
        "epoch s B": [tf.number(v, ".2f") for v in pairs["epoch_time_s_b"]],
        "img/s A": [tf.number(v, ",.0f") for v in pairs["images_per_s_a"]],
        "img/s B": [tf.number(v, ",.0f") for v in pairs["images_per_s_b"]],
        "speed-up": [_ratio(v) for v in pairs["speedup"]],
        "min-max": spread,
        "n": pairs["compared_epochs"].map(text),
        "verdict": pairs["verdict"].map(text),
        "test_acc A %": [tf.pct(v) for v in pairs["test_acc_a"]],
        "test_acc B %": [tf.pct(v) for v in pairs["test_acc_b"]],
    })


def notes(pairs: pd.DataFrame) -> list[str]:
    """What the table's figures are, and a caveat for each pair timed on too few epochs or on a
    device shared with other jobs."""
    out = [f"Speed-up: A's epoch time / B's, epoch by epoch; the median, its min-max over the n epochs compared. "
           f"Epoch 0 (warm-up, compile) is left out; times and images/s are medians of the same epochs. "
           f"A verdict needs n >= {MIN_EPOCHS}."]
    for k, row in enumerate(pairs.itertuples(index=False), start=1):
        if row.verdict == "too few epochs":
            what = "one epoch: a single noisy sample" if row.compared_epochs == 1 else f"{row.compared_epochs} epochs"
            out.append(f"pair {k} ({row.device_a}/{row.threads_a} vs {row.device_b}/{row.threads_b}): speed-up "
                       f"{_ratio(row.speedup)} from {what}, not a verdict; rerun with trainer.epochs>={MIN_EPOCHS + 1}")
        sides = [f"{side}'s {device} was shared by {shared(n)} jobs of its sweep"
                 for side, device, n in (("A", row.device_a, getattr(row, "shared_by_a", None)),
                                         ("B", row.device_b, getattr(row, "shared_by_b", None)))
                 if shared(n) > 1]
        if sides:
            out.append(f"pair {k}: {' and '.join(sides)} at once: its times include the other jobs' work, not the "
                       "device's speed alone; rerun with at most one job per GPU (hydra.launcher.n_jobs) to time it")
    return out


def render(pairs: pd.DataFrame, fmt: str, experiment: str) -> str:
    if fmt == "csv":
        return tf.csv_text(pairs[CSV_COLUMNS])
    title = f"Device comparison: {experiment} (speed-up = epoch time A / epoch time B)"
    text = tf.render_display(display_frame(pairs), fmt, NUMERIC, title, css_class="compare-devices")
    if fmt == "html":
        return text
    footer = "\n".join(("* " if fmt == "md" else "") + line for line in notes(pairs))
    body = f"{title}\n{text}" if fmt == "table" else text
    return f"{body}\n{footer}\n"


@shell.guarded(PROG)
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Pair runs of the same config and seed on different devices or thread counts; print "
                    "epoch time and images/s (warm-up epoch excluded), the speed-up with its spread over the "
                    "epochs, a verdict where enough epochs were timed, and both accuracies.",
    )
    shell.add_run_filters(p, sweep=False, tags=False, data=True)
    shell.add_output(p)
    args = p.parse_args(argv)
    pairs = compare(args.tracking_uri, args.experiment, args.model, args.data)
    shell.emit(render(pairs, args.format, args.experiment), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
