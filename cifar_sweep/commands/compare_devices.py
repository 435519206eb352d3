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

Repeats: the pairs of one config and setup pair over several seeds are repeats of one comparison
(`analysis.speedup`): the speed-up is then the median of the per-repeat ratios with a 95% bootstrap
interval, each side's spread over its repeats is checked (IQR / median > 10% is noted), and
`--target ACC` adds each side's time to that validation accuracy, scored as MLPerf scores repeats.
`--repeats N --job ... --a ... --b ...` runs those repeats itself: N seeds, one `cifar-sweep` run per
seed and side, interleaved A, B, A, B so that a slow minute of the machine falls on both sides,
then compares exactly those runs. With one run per side the table is the per-epoch one above and
says that it is a single sample.

The pairing and the arithmetic are `analysis.speedup`, the launching `repeat_runs`; here: reading the store, the
tables. Torch-free, like the leaderboard. Never imports another command: the shell and `analysis` only.
"""

from __future__ import annotations

import argparse
import html
from collections.abc import Collection

import pandas as pd

from cifar_sweep.analysis import confidence as conf
from cifar_sweep.analysis import histories as hist
from cifar_sweep.analysis import speedup as su
from cifar_sweep.commands import formats as tf
from cifar_sweep.commands import shell
from cifar_sweep.commands.repeat_runs import check_overrides, launch_repeats
from cifar_sweep.tracking import queries as rq
from cifar_sweep.tracking.store import open_store

PROG = "cifar-compare-devices"


def compare(tracking_uri: str | None, experiment: str, model: str | None = None,
            data: str | None = None, run_ids: Collection[str] | None = None, a_ids: Collection[str] = (),
            target: float | None = None) -> pd.DataFrame:
    """The per-seed pairs with their timing; `run_ids`: only these runs; `a_ids`: runs that must be
    side A; `target`: add each run's seconds to that val_acc (`target_time_s_a`, `_b`; NaN: never)."""
    client = open_store(tracking_uri)
    runs = rq.load_runs(client, rq.experiment_ids(client, [experiment]))
    if run_ids is not None and not runs.empty:
        runs = runs[runs["run_id"].isin(set(run_ids))]
    if runs.empty:
        raise rq.StoreError(f"experiment {experiment!r} has no runs yet")
    if data and not (rq.dataset_column(runs) == data).any():
        known = sorted({str(v) for v in rq.dataset_column(runs).dropna() if v})
        raise rq.StoreError(f"no runs on data {data!r} in {experiment!r}; its runs used: "
                            f"{', '.join(known) or 'no dataset tag'}")
    runs = rq.filter_runs(runs, model=model, data=data)
    table = su.run_table(runs)
    pairs = su.pair_runs(table)
    if pairs.empty and run_ids is not None:
        raise rq.StoreError(f"the {len(runs)} runs compared do not pair: a pair is one config (config_hash) and seed "
                            "on two setups, so --a and --b may change only trainer.device, trainer.threads, "
                            "trainer.compile or trainer.precision")
    if pairs.empty:
        finished = int((runs["status"] == rq.FINISHED).sum())
        raise rq.StoreError(
            f"no pairs in {experiment!r} ({finished} finished runs, {len(table)} of them with config_hash, seed "
            "and device): pairing needs two runs with the "
            "same config_hash and seed on a different device or thread count, e.g. "
            "`cifar-sweep -m trainer.threads=1,2` or `cifar-sweep -m trainer.device=cpu,cuda`"
        )
    pairs = su.orient(pairs, a_ids)
    ids = list(pairs["run_id_a"]) + list(pairs["run_id_b"])
    keys = ["epoch_time_s", "images_per_s"] + (["val_acc", "elapsed_s"] if target is not None else [])
    histories = rq.load_histories(client, ids, keys)
    pairs = su.add_timing(pairs, histories)
    if target is not None:
        reached = hist.time_to_target(histories, target)["target_time_s"]
        for side in ("a", "b"):
            pairs[f"target_time_s_{side}"] = pairs[f"run_id_{side}"].map(reached).astype(float)
    return pairs


# -- rendering ------------------------------------------------------------------------------------

NUMERIC = {"seed", "lr", "epochs", "threads A", "threads B", "epoch s A", "epoch s B", "img/s A", "img/s B",
           "speed-up", "min-max", "n", "test_acc A %", "test_acc B %"}
CSV_COLUMNS = ["model", "data", "optimizer", "lr", "schedule", "epochs", "batch_size", "seed", "config_hash",
               "device_a", "threads_a", "device_name_a", "precision_a", "compile_a", "shared_by_a", "device_b",
               "threads_b", "device_name_b", "precision_b", "compile_b", "shared_by_b", "epoch_time_s_a",
               "epoch_time_s_b", "first_epoch_time_s_a", "first_epoch_time_s_b", "images_per_s_a", "images_per_s_b", "speedup", "speedup_min", "speedup_max", "compared_epochs",
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
        "model": pairs["model"].map(text), "data": pairs["data"].map(text), "optimizer": pairs["optimizer"].map(text),
        "lr": pairs["lr"].map(text),
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
           f"A verdict needs n >= {su.MIN_EPOCHS}."]
    for k, row in enumerate(pairs.itertuples(index=False), start=1):
        if row.verdict == "too few epochs":
            what = "one epoch: a single noisy sample" if row.compared_epochs == 1 else f"{row.compared_epochs} epochs"
            out.append(f"pair {k} ({row.device_a}/{row.threads_a} vs {row.device_b}/{row.threads_b}): speed-up "
                       f"{_ratio(row.speedup)} from {what}, not a verdict; rerun with trainer.epochs>={su.MIN_EPOCHS + 1}")
        sides = [f"{side}'s {device} was shared by {shared(n)} jobs of its sweep"
                 for side, device, n in (("A", row.device_a, getattr(row, "shared_by_a", None)),
                                         ("B", row.device_b, getattr(row, "shared_by_b", None)))
                 if shared(n) > 1]
        if sides:
            out.append(f"pair {k}: {' and '.join(sides)} at once: its times include the other jobs' work, not the "
                       "device's speed alone; rerun with at most one job per GPU (hydra.launcher.n_jobs) to time it")
    return out


SINGLE_SAMPLE = ("Each pair is a single sample (one run per side): its min-max spans the epochs of two runs, not "
                 "run-to-run noise, and there is no interval across repeats; --repeats N (or seeds 0..N-1 on both "
                 "setups) times repeats.")


def render(pairs: pd.DataFrame, fmt: str, experiment: str) -> str:
    """The per-epoch table: one row per pair of runs (one config and seed on two setups)."""
    if fmt == "csv":
        return tf.csv_text(pairs[CSV_COLUMNS])
    title = f"Device comparison: {experiment} (speed-up = epoch time A / epoch time B)"
    return _page(display_frame(pairs), NUMERIC, notes(pairs) + [SINGLE_SAMPLE], fmt, title)


def _page(shown: pd.DataFrame, numeric: set[str], lines: list[str], fmt: str, title: str) -> str:
    """The table with its notes under it: plain lines, a Markdown list or HTML paragraphs."""
    if fmt == "html":
        notes_html = "".join(f'<p class="note">{html.escape(line)}</p>\n' for line in lines)
        return tf.html_page(title, tf.html_table(shown, numeric, css_class="compare-devices") + notes_html)
    text = tf.render_display(shown, fmt, numeric, title, css_class="compare-devices")
    footer = "\n".join(("* " if fmt == "md" else "") + line for line in lines)
    body = f"{title}\n{text}" if fmt == "table" else text
    return f"{body}\n{footer}\n"


# -- repeats: one row per setup pair ---------------------------------------------------------------

REPEAT_NUMERIC = {"lr", "epochs", "threads A", "threads B", "runs", "epoch s A", "epoch s B", "spread A",
                  "spread B", "speed-up", "95% CI", "test_acc A %", "test_acc B %"}
REPEAT_CSV = ["model", "data", "optimizer", "lr", "schedule", "epochs", "batch_size", "config_hash", "device_a", "threads_a",
              "device_name_a", "precision_a", "compile_a", "shared_by_a", "device_b", "threads_b", "device_name_b",
              "precision_b", "compile_b", "shared_by_b", "n", "seeds", "epoch_time_s_a", "epoch_time_s_b", "spread_a",
              "spread_b", "images_per_s_a", "images_per_s_b", "speedup", "speedup_ci_low", "speedup_ci_high",
              "verdict", "test_acc_a", "test_acc_b", "run_ids_a", "run_ids_b"]


def _target_cells(summary: pd.DataFrame, side: str) -> list[str]:
    return [f"{tf.seconds(t)} ({k}/{n})" for t, k, n in
            zip(summary[f"target_time_s_{side}"], summary[f"target_reached_{side}"], summary["n"])]


def repeats_frame(summary: pd.DataFrame, target: float | None = None) -> pd.DataFrame:
    text = lambda v: tf.MISSING if tf.is_missing(v) else str(v)  # noqa: E731
    pct = lambda v: tf.MISSING if tf.is_missing(v) else f"{100 * v:.0f}%"  # noqa: E731
    shown = pd.DataFrame({
        "model": summary["model"].map(text), "data": summary["data"].map(text),
        "optimizer": summary["optimizer"].map(text),
        "lr": summary["lr"].map(text), "epochs": summary["epochs"].map(text),
        "device A": [_device_text(d, n) for d, n in zip(summary["device_a"], summary["shared_by_a"])],
        "threads A": summary["threads_a"].map(text),
        "prec A": [_precision_text(p, c) for p, c in zip(summary["precision_a"], summary["compile_a"])],
        "device B": [_device_text(d, n) for d, n in zip(summary["device_b"], summary["shared_by_b"])],
        "threads B": summary["threads_b"].map(text),
        "prec B": [_precision_text(p, c) for p, c in zip(summary["precision_b"], summary["compile_b"])],
        "runs": summary["n"].map(text),
        "epoch s A": [tf.number(v, ".3f") for v in summary["epoch_time_s_a"]],
        "epoch s B": [tf.number(v, ".3f") for v in summary["epoch_time_s_b"]],
        "spread A": summary["spread_a"].map(pct), "spread B": summary["spread_b"].map(pct),
        "speed-up": [_ratio(v) for v in summary["speedup"]],
        "95% CI": [tf.MISSING if tf.is_missing(lo) else f"{lo:.2f}-{hi:.2f}x"
                   for lo, hi in zip(summary["speedup_ci_low"], summary["speedup_ci_high"])],
        "verdict": summary["verdict"].map(text),
    })
    if target is not None:
        shown[f"to {target:g} A"] = _target_cells(summary, "a")
        shown[f"to {target:g} B"] = _target_cells(summary, "b")
    shown["test_acc A %"] = [tf.pct(v) for v in summary["test_acc_a"]]
    shown["test_acc B %"] = [tf.pct(v) for v in summary["test_acc_b"]]
    return shown


def repeat_notes(summary: pd.DataFrame, target: float | None = None) -> list[str]:
    out = [f"Speed-up: A's epoch time / B's per repeat (the runs of one seed on both sides; a run's time is the median "
           f"of its epochs after the warm-up epoch 0), the median over the runs, and its 95% percentile-bootstrap "
           f"interval ({conf.RESAMPLES:,} resamples, seed {conf.RNG_SEED}). A verdict needs the interval to leave out "
           f"1. spread: IQR / median of a side's epoch times."]
    if target is not None:
        out.append(f"to {target:g}: seconds (elapsed_s) until val_acc first reached {target:g}, the mean over the runs "
                   f"that reached it (reached/runs); from {conf.MLPERF_TRIM_FROM} runs on the fastest and the "
                   "slowest are dropped, as MLPerf Training scores repeats.")
    for k, row in enumerate(summary.itertuples(index=False), start=1):
        setups = f"{row.device_a}/{row.threads_a} vs {row.device_b}/{row.threads_b}"
        if row.n == 1:
            out.append(f"pair {k} ({setups}): a single sample (one run per side): no interval, not a verdict; "
                       "--repeats 5 times five")
        noisy = su.noisy_sides(row)
        if noisy:
            out.append(f"pair {k} ({setups}): runs spread over {100 * conf.SPREAD_LIMIT:.0f}% (IQR / median: "
                       f"{', '.join(noisy)}): the machine was busy or the runs differ; read the interval, "
                       "not the median")
        sides = [f"{side}'s {device} by {shared(n)} jobs" for side, device, n in
                 (("A", row.device_a, row.shared_by_a), ("B", row.device_b, row.shared_by_b)) if shared(n) > 1]
        if sides:
            out.append(f"pair {k}: device shared at once ({' and '.join(sides)} of its sweep): its times include the "
                       "other jobs' work; rerun with at most one job per GPU (hydra.launcher.n_jobs)")
    return out


def render_repeats(summary: pd.DataFrame, fmt: str, experiment: str, target: float | None = None) -> str:
    """One row per setup pair, its seeds as repeats."""
    if fmt == "csv":
        cols = REPEAT_CSV + ([f"target_time_s_{s}" for s in "ab"] + [f"target_reached_{s}" for s in "ab"]
                             if target is not None else [])
        out = summary[cols].copy()
        for col in ("seeds", "run_ids_a", "run_ids_b"):
            out[col] = out[col].map(lambda v: ";".join(map(str, v)))
        return tf.csv_text(out)
    title = f"Device comparison over repeats: {experiment} (speed-up = epoch time A / epoch time B)"
    shown = repeats_frame(summary, target)
    numeric = REPEAT_NUMERIC | {c for c in shown.columns if c.startswith("to ")}
    return _page(shown, numeric, repeat_notes(summary, target), fmt, title)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Pair runs of the same config on different devices or thread counts; print epoch time and "
                    "images/s (warm-up epoch excluded), the speed-up and both accuracies. Runs of several seeds "
                    "on both setups are repeats: one row per setup pair with the median speed-up over them, its "
                    "95%% bootstrap interval and each side's spread. One run per side: a row per pair, the "
                    "spread over its epochs, and a note that it is a single sample.",
        epilog="Timing repeats itself: `cifar-compare-devices --repeats 3 --job data=synthetic trainer.epochs=2 "
               "--a trainer.device=cpu trainer.threads=1 --b trainer.device=cpu trainer.threads=2` runs seeds 0, 1, 2 "
               "on A and B (A, B, A, B, ...: six cifar-sweep runs, one at a time) and compares exactly those runs. "
               "--job takes the overrides of the job both sides run, --a and --b each side's own ones.",
    )
    shell.add_run_filters(p, sweep=False, tags=False, data=True)
    p.add_argument("--target", type=float, metavar="ACC",
                   help="add each side's seconds to reach val_acc ACC (a fraction, e.g. 0.6): the mean over the "
                        "repeats, fastest and slowest dropped from 5 repeats on (MLPerf style)")
    p.add_argument("--per-epoch", action="store_true",
                   help="one row per pair of runs (config, seed) with the spread over its epochs, even with repeats")
    p.add_argument("--repeats", type=int, metavar="N",
                   help="run N repeats per side now (seeds --seed..--seed+N-1, interleaved A, B, A, B as cifar-sweep "
                        "processes), then compare exactly those runs; needs --a and --b")
    p.add_argument("--job", nargs="+", default=[], metavar="OVERRIDE", help="with --repeats: overrides of the job")
    p.add_argument("--a", nargs="+", default=[], metavar="OVERRIDE", help="with --repeats: overrides of setup A")
    p.add_argument("--b", nargs="+", default=[], metavar="OVERRIDE", help="with --repeats: overrides of setup B")
    p.add_argument("--seed", type=int, default=0, help="with --repeats: the first seed (default: %(default)s)")
    shell.add_output(p)
    return p


@shell.guarded(PROG)
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.target is not None and not 0 < args.target <= 1:
        raise shell.BadOption(f"--target is an accuracy fraction in (0, 1], got {args.target}")
    run_ids, a_ids = None, ()
    if args.repeats is not None:
        if args.repeats < 1:
            raise shell.BadOption("--repeats wants a positive number of runs per side")
        check_overrides(args.job, args.a, args.b)
        a_ids, b_ids = launch_repeats(args.repeats, args.job, args.a, args.b, args.experiment, args.tracking_uri,
                                      args.seed, prog=PROG)
        run_ids = [*a_ids, *b_ids]
    elif args.job or args.a or args.b:
        raise shell.BadOption("--job, --a and --b describe runs to launch", hint="; add --repeats N")
    pairs = compare(args.tracking_uri, args.experiment, args.model, args.data, run_ids, a_ids, args.target)
    summary = su.summarize(pairs)
    if args.per_epoch or (run_ids is None and args.target is None and (summary["n"] <= 1).all()):
        text = render(pairs, args.format, args.experiment)
    else:
        text = render_repeats(summary, args.format, args.experiment, args.target)
    shell.emit(text, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
