"""Reported beside measured: one row per write-up preset, the write-up's figure next to the runs'.

A write-up preset is one that records what its write-up reported (`reported.test_acc` in
conf/experiment/, logged as the `reported_acc` tag, with `experiment_preset` naming the preset).
The rows come from the leaderboard's own ranking (`analysis.ranking`): seeds fold into mean ± std
exactly as on the board, then each preset keeps one row, the configuration it ran most recently, so
an edited preset replaces its older figures instead of standing beside them.

Torch-free, like the rest of the reporting path.
"""

from __future__ import annotations

import math

import pandas as pd

from cifar_sweep.analysis import ranking
from cifar_sweep.tracking import lookup
from cifar_sweep.tracking import queries as rq

PRESET_TAG = "tags.experiment_preset"
REPORTED_TAG = "tags.reported_acc"
METRIC = "test_acc"
COLUMNS = ["preset", "source", "model", "epochs", "reported_acc", "test_acc", "test_acc_std", "n",
           "gap_pts", "train_time_s", "images_per_s", "run_ids"]


def writeup_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs of presets that carry a reported figure (a write-up's), sweep parents left out."""
    runs = rq.drop_sweep_parents(runs)
    preset = rq.column(runs, PRESET_TAG, None)
    reported = pd.to_numeric(rq.column(runs, REPORTED_TAG), errors="coerce")
    return runs[preset.notna() & (preset.astype(str) != "") & reported.notna()]


def reported_rows(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per write-up preset: reported, measured test accuracy (mean ± std over seeds), gap in points.

    `runs` is a runs frame as `tracking.queries.load_runs` returns it. The gap is measured minus
    reported, in percentage points, so a negative gap is a shortfall.
    """
    runs = writeup_runs(runs)
    if runs.empty:
        return pd.DataFrame(columns=COLUMNS)
    ranked = ranking.rank_runs(runs, by=METRIC, order="desc")
    if ranked.empty:
        return pd.DataFrame(columns=COLUMNS)
    preset_of = rq.column(runs, PRESET_TAG, None).astype(str)
    preset_of.index = runs["run_id"].astype(str)
    source_of = rq.column(runs, "tags.reported_source", None)
    source_of.index = preset_of.index
    start_of = pd.to_numeric(runs["start_time"], errors="coerce")
    start_of.index = preset_of.index
    # A folded row's runs share one config, hence one preset; its newest run dates the row.
    ranked["preset"] = ranked["run_ids"].map(lambda ids: preset_of[ids[0]] if ids else None)
    ranked["source"] = ranked["run_ids"].map(lambda ids: source_of[ids[0]] if ids else None)
    ranked["newest"] = ranked["run_ids"].map(lambda ids: max(start_of[i] for i in ids) if ids else math.nan)
    rows = (ranked.sort_values("newest", ascending=False, kind="stable")
            .drop_duplicates("preset").sort_values("preset", kind="stable").reset_index(drop=True))
    rows["gap_pts"] = 100 * (rows["test_acc"] - rows["reported_acc"])
    return rows


def build(query: ranking.Query) -> tuple[pd.DataFrame, int]:
    """Load the experiment's runs (the leaderboard's filters apply), one row per write-up preset.

    Returns the rows (with images/s from the per-epoch history, as on the board) and how many runs
    were read.
    """
    client, _ = lookup.open_store(query.tracking_uri)
    runs = rq.load_runs(client, rq.experiment_ids(client, [query.experiment]))
    if runs.empty:
        raise rq.StoreError(f"experiment {query.experiment!r} has no runs yet")
    runs = rq.filter_runs(rq.drop_sweep_parents(runs), query.sweep, query.model, query.tags)
    rows = reported_rows(runs)
    if rows.empty:
        raise rq.StoreError(
            f"no FINISHED run of a write-up preset in experiment {query.experiment!r} "
            "(presets with a reported figure, e.g. `cifar-sweep experiment=keras_logreg`)"
        )
    histories = rq.load_histories(client, [r for ids in rows["run_ids"] for r in ids], ["images_per_s"])
    rows = ranking.add_run_stats(rows, histories, None)
    return rows[COLUMNS], len(runs)


def display_frame(rows: pd.DataFrame, fmt) -> tuple[pd.DataFrame, set[str]]:
    """Display strings; `fmt` is `commands.formats` (passed in: analysis never imports the shell)."""
    shown = pd.DataFrame({
        "preset": rows["preset"],
        "write-up": rows["source"].map(lambda v: fmt.MISSING if fmt.is_missing(v) else str(v)),
        "model": rows["model"].map(lambda v: fmt.MISSING if fmt.is_missing(v) else str(v)),
        "epochs": [fmt.number(v) for v in rows["epochs"]],
        "reported %": [fmt.pct(v) for v in rows["reported_acc"]],
        "measured %": [fmt.pct(m, s, n) for m, s, n in zip(rows["test_acc"], rows["test_acc_std"], rows["n"])],
        "n": [str(n) for n in rows["n"]],
        "gap (pts)": [fmt.MISSING if fmt.is_missing(g) else f"{g:+.2f}" for g in rows["gap_pts"]],
        "train time": [fmt.seconds(v) for v in rows["train_time_s"]],
        "img/s": [fmt.number(v, ",.0f") for v in rows["images_per_s"]],
    })
    return shown, {"epochs", "reported %", "measured %", "n", "gap (pts)", "train time", "img/s"}


def csv_frame(rows: pd.DataFrame) -> pd.DataFrame:
    out = rows.drop(columns=["run_ids"]).copy()
    out["run_ids"] = rows["run_ids"].map(";".join)
    return out


def render(rows: pd.DataFrame, n_runs: int, fmt_name: str, fmt) -> str:
    """The whole `cifar-leaderboard --reported` output in one of `fmt.FORMATS`."""
    if fmt_name == "csv":
        return fmt.csv_text(csv_frame(rows))
    heading = "Write-ups: reported beside measured (test accuracy, seeds folded)"
    shown, numeric = display_frame(rows, fmt)
    text = fmt.render_display(shown, fmt_name, numeric, title=heading)
    if fmt_name == "table":
        text = f"{heading} ({n_runs} runs, {len(rows)} presets)\n" + text
    return text
