"""Reported beside measured: one row per write-up preset, the write-up's figure next to the runs'.

A write-up preset is one that records what its write-up reported (`reported.test_acc` in
conf/experiment/, logged as the `reported_acc` tag, with `experiment_preset` naming the preset).
The rows come from the leaderboard's own ranking (`analysis.ranking`): seeds fold into mean ± std
exactly as on the board, then each preset keeps one row, the configuration it ran most recently, so
an edited preset replaces its older figures instead of standing beside them.

Torch-free, like the rest of the reporting path. How the rows look is `commands.board_view`.
"""

from __future__ import annotations

import math

import pandas as pd

from cifar_sweep.analysis import ranking
from cifar_sweep.tracking import queries as rq
from cifar_sweep.tracking.store import open_store

PRESET_TAG = "tags.experiment_preset"
REPORTED_TAG = "tags.reported_acc"
METRIC = "test_acc"
COLUMNS = ["preset", "source", "model", "epochs", "reported_acc", "test_acc", "test_acc_std", "n",
           "gap_pts", "train_time_s", "images_per_s", "run_ids"]


def preset_runs(runs: pd.DataFrame, reported_only: bool = True) -> pd.DataFrame:
    """Runs of a preset (`experiment_preset` tag), sweep parents left out; with `reported_only`,
    only the presets that carry a reported figure (a write-up's)."""
    runs = rq.drop_sweep_parents(runs)
    preset = rq.column(runs, PRESET_TAG, None)
    keep = preset.notna() & (preset.astype(str) != "")
    if reported_only:
        keep &= pd.to_numeric(rq.column(runs, REPORTED_TAG), errors="coerce").notna()
    return runs[keep]


def newest_per_preset(runs: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard's rows of these preset runs (FINISHED, seeds folded, by test accuracy), one per
    preset: the configuration it ran most recently. Columns as `ranking.rank_runs` gives, plus
    `preset`, `source` (the `reported_source` tag) and `newest` (the start of the row's newest run)."""
    ranked = ranking.rank_runs(runs, by=METRIC, order="desc") if not runs.empty else pd.DataFrame()
    if ranked.empty:
        return ranked
    ids = runs["run_id"].astype(str)
    preset_of = pd.Series(rq.column(runs, PRESET_TAG, None).astype(str).to_numpy(), index=ids)
    source_of = pd.Series(rq.column(runs, "tags.reported_source", None).to_numpy(), index=ids)
    start_of = pd.Series(pd.to_numeric(runs["start_time"], errors="coerce").to_numpy(), index=ids)
    # A folded row's runs share one config, hence one preset; its newest run dates the row.
    ranked["preset"] = ranked["run_ids"].map(lambda ids: preset_of[ids[0]] if ids else None)
    ranked["source"] = ranked["run_ids"].map(lambda ids: source_of[ids[0]] if ids else None)
    ranked["newest"] = ranked["run_ids"].map(lambda ids: max(start_of[i] for i in ids) if ids else math.nan)
    return (ranked.sort_values("newest", ascending=False, kind="stable")
            .drop_duplicates("preset").sort_values("preset", kind="stable").reset_index(drop=True))


def reported_rows(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per write-up preset: reported, measured test accuracy (mean ± std over seeds), gap in points.

    `runs` is a runs frame as `tracking.queries.load_runs` returns it. The gap is measured minus
    reported, in percentage points, so a negative gap is a shortfall.
    """
    rows = newest_per_preset(preset_runs(runs))
    if rows.empty:
        return pd.DataFrame(columns=COLUMNS)
    rows["gap_pts"] = 100 * (rows["test_acc"] - rows["reported_acc"])
    return rows


def load_runs(query: ranking.Query):
    """(client, runs): the experiment's runs that the query's filters keep, sweep parents left out."""
    client = open_store(query.tracking_uri)
    runs = rq.load_runs(client, rq.experiment_ids(client, [query.experiment]))
    if runs.empty:
        raise rq.StoreError(f"experiment {query.experiment!r} has no runs yet")
    return client, rq.filter_runs(rq.drop_sweep_parents(runs), query.sweep, query.model, query.tags)


def build(query: ranking.Query) -> tuple[pd.DataFrame, int]:
    """Load the experiment's runs (the leaderboard's filters apply), one row per write-up preset.

    Returns the rows (with images/s as on the board) and how many runs
    were read.
    """
    client, runs = load_runs(query)
    rows = reported_rows(runs)
    if rows.empty:
        raise rq.StoreError(
            f"no FINISHED run of a write-up preset in experiment {query.experiment!r} "
            "(presets with a reported figure, e.g. `cifar-sweep experiment=keras_logreg`)"
        )
    rows = ranking.with_run_stats(client, rows, runs, None)
    return rows[COLUMNS], len(runs)
