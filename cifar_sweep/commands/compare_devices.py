"""`cifar-compare-devices`: the same training job on two devices or thread counts, side by side.

Two FINISHED runs pair when their `config_hash` (resolved config without seed, device, threads)
and their seed are equal but their setup (device, thread count, device name) differs. For each
pair: mean epoch time and images/s (warm-up epoch 0 left out when there are >= 2 epochs), the
speed-up of B over A, and the test accuracy of both, so a faster setup that learned worse shows.

Torch-free, like the leaderboard. Never imports another command: the shell and `analysis` only.
"""

from __future__ import annotations

import argparse
import itertools
import math

import pandas as pd

from cifar_sweep.analysis import histories as hist
from cifar_sweep.commands import formats as tf
from cifar_sweep.commands import shell
from cifar_sweep.tracking import queries as rq

PROG = "cifar-compare-devices"

SETUP = ["device", "threads", "device_name"]
# Slower kinds first, so A is the reference and a speed-up > 1 means B is faster.
DEVICE_ORDER = {"cpu": 0, "mps": 1, "xpu": 2, "cuda": 3}


def _setup_sort_key(device, threads, device_name) -> tuple:
    kind = str(device).split(":")[0]
    count = pd.to_numeric(threads, errors="coerce")
    return (DEVICE_ORDER.get(kind, 9), str(device), math.inf if pd.isna(count) else float(count), str(device_name))


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
        "test_acc": pd.to_numeric(rq.column(runs, "metrics.test_acc"), errors="coerce"),
    }).dropna(subset=["config_hash", "seed", "device"])


def pair_runs(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (config, seed, setup A, setup B); a setup's latest run stands for it."""
    table = table.fillna({"threads": "?", "device_name": "?"})
    latest = table.sort_values("start_time").drop_duplicates(["config_hash", "seed", *SETUP], keep="last")
    rows = []
    for _, group in latest.groupby(["config_hash", "seed"], sort=True):
        if len(group) < 2:
            continue
        ordered = sorted(group.itertuples(index=False),
                         key=lambda r: _setup_sort_key(r.device, r.threads, r.device_name))
        for a, b in itertools.combinations(ordered, 2):
            row = {k: getattr(a, k) for k in ("config_hash", "seed", "model", "optimizer", "lr", "schedule", "epochs",
                                             "batch_size")}
            for side, run in (("a", a), ("b", b)):
                row.update({f"{k}_{side}": getattr(run, k)
                            for k in ("run_id", "device", "threads", "device_name", "precision", "test_acc")})
            rows.append(row)
    return pd.DataFrame(rows)


def add_timing(pairs: pd.DataFrame, histories: pd.DataFrame) -> pd.DataFrame:
    epoch_time = hist.mean_excluding_warmup(histories, "epoch_time_s")
    throughput = hist.mean_excluding_warmup(histories, "images_per_s")
    pairs = pairs.copy()
    for side in ("a", "b"):
        pairs[f"epoch_time_s_{side}"] = pairs[f"run_id_{side}"].map(epoch_time).astype(float)
        pairs[f"images_per_s_{side}"] = pairs[f"run_id_{side}"].map(throughput).astype(float)
    # Ratio of epoch times: what a user waits for. > 1: B is faster.
    pairs["speedup"] = pairs["epoch_time_s_a"] / pairs["epoch_time_s_b"]
    return pairs.sort_values(["model", "config_hash", "seed"], kind="stable").reset_index(drop=True)


def compare(tracking_uri: str | None, experiment: str, model: str | None = None) -> pd.DataFrame:
    client, _ = shell.open_store(tracking_uri)
    runs = rq.load_runs(client, rq.experiment_ids(client, [experiment]))
    if runs.empty:
        raise rq.StoreError(f"experiment {experiment!r} has no runs yet")
    runs = rq.filter_runs(runs, model=model)
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
           "speed-up", "test_acc A %", "test_acc B %"}
CSV_COLUMNS = ["model", "optimizer", "lr", "schedule", "epochs", "batch_size", "seed", "config_hash",
               "device_a", "threads_a", "device_name_a", "precision_a", "device_b", "threads_b", "device_name_b",
               "precision_b", "epoch_time_s_a", "epoch_time_s_b", "images_per_s_a", "images_per_s_b", "speedup",
               "test_acc_a", "test_acc_b", "run_id_a", "run_id_b"]


def display_frame(pairs: pd.DataFrame) -> pd.DataFrame:
    text = lambda v: tf.MISSING if tf.is_missing(v) else str(v)  # noqa: E731
    return pd.DataFrame({
        "model": pairs["model"].map(text), "optimizer": pairs["optimizer"].map(text), "lr": pairs["lr"].map(text),
        "schedule": pairs["schedule"].map(text), "epochs": pairs["epochs"].map(text), "seed": pairs["seed"].map(text),
        "device A": pairs["device_a"].map(text), "threads A": pairs["threads_a"].map(text),
        "prec A": pairs["precision_a"].map(text),
        "device B": pairs["device_b"].map(text), "threads B": pairs["threads_b"].map(text),
        "prec B": pairs["precision_b"].map(text),
        "epoch s A": [tf.number(v, ".2f") for v in pairs["epoch_time_s_a"]],
        "epoch s B": [tf.number(v, ".2f") for v in pairs["epoch_time_s_b"]],
        "img/s A": [tf.number(v, ",.0f") for v in pairs["images_per_s_a"]],
        "img/s B": [tf.number(v, ",.0f") for v in pairs["images_per_s_b"]],
        "speed-up": [tf.MISSING if tf.is_missing(v) else f"{v:.2f}x" for v in pairs["speedup"]],
        "test_acc A %": [tf.pct(v) for v in pairs["test_acc_a"]],
        "test_acc B %": [tf.pct(v) for v in pairs["test_acc_b"]],
    })


def render(pairs: pd.DataFrame, fmt: str, experiment: str) -> str:
    if fmt == "csv":
        return tf.csv_text(pairs[CSV_COLUMNS])
    title = f"Device comparison: {experiment} (speed-up = epoch time A / epoch time B)"
    text = tf.render_display(display_frame(pairs), fmt, NUMERIC, title, css_class="compare-devices")
    return f"{title}\n{text}" if fmt == "table" else text


@shell.guarded(PROG)
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Pair runs of the same config and seed on different devices or thread counts; print "
                    "epoch time and images/s (warm-up epoch excluded), the speed-up and both accuracies.",
    )
    shell.add_run_filters(p, sweep=False, tags=False)
    shell.add_output(p)
    args = p.parse_args(argv)
    pairs = compare(args.tracking_uri, args.experiment, args.model)
    shell.emit(render(pairs, args.format, args.experiment), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
