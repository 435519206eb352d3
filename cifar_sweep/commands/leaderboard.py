"""`cifar-leaderboard`: rank an experiment's runs by best validation accuracy, seeds folded.

Never imports torch (directly or through cifar_sweep): it must answer in a second on a laptop
without a GPU stack. Reads MLflow through `runs_query`, ranks with pandas, renders with `table_format`.

Folding: runs with the same `config_hash` (resolved config without seed, device and threads), the
same device and the same thread count become one row with mean ± std and n. Device and threads are
part of the key on purpose: they do not change what is learned, but they do change the time and
images/s columns, and a mean over a GPU run and a CPU run would describe neither. Put the same
config on two devices side by side with `cifar-compare-devices`.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from cifar_sweep.tracking import queries as rq
from cifar_sweep.commands import formats as tf

DEFAULT_METRIC = "best_val_acc"
# Per-run statistics the rows carry (mean ± std over folded seeds).
STAT_METRICS = ("best_val_acc", "test_acc", "train_time_s")


@dataclass
class Query:
    tracking_uri: str | None = None
    experiment: str = rq.DEFAULT_EXPERIMENT
    sweep: str | None = None
    model: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    by: str = DEFAULT_METRIC
    order: str = "auto"  # auto | asc | desc
    top: int | None = None
    all_status: bool = False
    fold: bool = True
    target: float | None = None


@dataclass
class Board:
    """The ranked rows (raw values) and what they answer."""

    rows: pd.DataFrame
    query: Query
    n_runs: int

    def __len__(self) -> int:
        return len(self.rows)


# -- ranking (pure: a runs frame in, a rows frame out) --------------------------------------------


def lower_is_better(metric: str) -> bool:
    return "loss" in metric or metric.endswith("time_s") or metric.startswith("elapsed")


def _numeric(series: pd.Series) -> pd.Series:
    return pd.to_numeric(series, errors="coerce")


def members(runs: pd.DataFrame, by: str, fold: bool) -> pd.DataFrame:
    """One normalised row per run, with the key it folds under."""
    col = lambda name, default=math.nan: rq.column(runs, name, default)  # noqa: E731
    out = pd.DataFrame({
        "run_id": runs["run_id"],
        "run_name": runs["run_name"].fillna("").astype(str),
        "status": runs["status"],
        "start_time": _numeric(runs["start_time"]),
        "model": col("tags.model", None),
        "optimizer": col("tags.optimizer", None),
        "lr": _numeric(col("params.optimizer.lr")),
        "schedule": col("tags.schedule", None),
        "epochs": _numeric(col("params.trainer.epochs")).astype("Int64"),
        "device": col("tags.device", None),
        "threads": col("tags.threads", None).fillna(col("params.trainer.threads", None)),
        "config_hash": col("tags.config_hash", None),
        "n_params": _numeric(col("tags.n_params")).astype("Int64"),
        "reported_acc": _numeric(col("tags.reported_acc")),
        "failure_reason": col("tags.failure_reason", None),
    }, index=runs.index)
    for metric in dict.fromkeys((*STAT_METRICS, by)):
        out[metric] = _numeric(col(f"metrics.{metric}"))
    key = out["config_hash"].astype(str) + "|" + out["device"].astype(str) + "|" + out["threads"].astype(str)
    # Only finished runs with a hash fold: a failed seed must not drag down its siblings' mean.
    alone = (not fold) | out["config_hash"].isna() | (out["status"] != rq.FINISHED)
    out["fold_key"] = key.where(~alone, "run:" + out["run_id"])
    return out


def _fold(runs: pd.DataFrame, by: str, descending: bool) -> pd.DataFrame:
    """Mean ± std (sample std, ddof=1) and n per fold key; descriptive columns from the best member."""
    ordered = runs.sort_values([by, "start_time"], ascending=[not descending, True], na_position="last")
    best = ordered.drop_duplicates("fold_key").set_index("fold_key")
    grouped = ordered.groupby("fold_key", sort=False)
    stats = grouped[list(dict.fromkeys((*STAT_METRICS, by)))].agg(["mean", "std"])
    rows = best.drop(columns=list(dict.fromkeys((*STAT_METRICS, by))))
    for metric in dict.fromkeys((*STAT_METRICS, by)):
        rows[metric] = stats[(metric, "mean")]
        rows[f"{metric}_std"] = stats[(metric, "std")]
    rows["n"] = grouped.size()
    rows["run_ids"] = grouped["run_id"].agg(list)
    return rows.reset_index()


def rank_runs(runs: pd.DataFrame, by: str = DEFAULT_METRIC, order: str = "auto", fold: bool = True,
              all_status: bool = False, top: int | None = None) -> pd.DataFrame:
    """FINISHED runs ranked best first (NaN last), seeds folded; with all_status, the others after."""
    descending = {"asc": False, "desc": True}.get(order, not lower_is_better(by))
    rows = members(runs, by, fold)
    finished = rows[rows["status"] == rq.FINISHED]
    ranked = _fold(finished, by, descending) if len(finished) else _fold(rows.iloc[:0], by, descending)
    # Ties break on test accuracy, then name and id, so the order never depends on the store's.
    ranked["first_run_id"] = ranked["run_ids"].map(lambda ids: min(ids) if ids else "")
    ranked = ranked.sort_values(
        [by, "test_acc", "run_name", "first_run_id"],
        ascending=[not descending, False, True, True], na_position="last", kind="stable",
    ).head(top if top is not None else len(ranked))
    ranked.insert(0, "rank", pd.array(range(1, len(ranked) + 1), dtype="Int64"))
    if all_status:
        others = rows[rows["status"] != rq.FINISHED]
        others = _fold(others, by, descending) if len(others) else others.iloc[:0]
        if len(others):
            others["first_run_id"] = others["run_ids"].map(min)
            others = others.sort_values(["status", "run_name", "first_run_id"], kind="stable")
            others.insert(0, "rank", pd.array([pd.NA] * len(others), dtype="Int64"))
            ranked = pd.concat([ranked, others], ignore_index=True)
    return ranked.drop(columns=["first_run_id"]).reset_index(drop=True)


def add_run_stats(rows: pd.DataFrame, histories: pd.DataFrame, target: float | None) -> pd.DataFrame:
    """Per-epoch figures, averaged over each row's runs: images/s (warm-up excluded), time to target."""
    rows = rows.copy()
    per_run = pd.DataFrame(index=pd.Index(sorted({r for ids in rows["run_ids"] for r in ids}), name="run_id"))
    per_run["images_per_s"] = rq.mean_excluding_warmup(histories, "images_per_s")
    if target is not None:
        per_run = per_run.join(rq.time_to_target(histories, target))

    # One row per (row, run) so the per-row means are a single groupby, not a loop over rows.
    pairs = rows["run_ids"].explode().dropna().rename("run_id").to_frame().join(per_run, on="run_id")
    by_row = pairs.groupby(level=0)
    rows["images_per_s"] = by_row["images_per_s"].mean()
    if target is not None:
        rows["target_epoch"] = by_row["target_epoch"].mean()
        rows["target_time_s"] = by_row["target_time_s"].mean()
        rows["target_reached"] = by_row["target_epoch"].count().reindex(rows.index, fill_value=0)
    return rows


# -- loading --------------------------------------------------------------------------------------


def _describe_filters(query: Query) -> str:
    parts = [f"--sweep {query.sweep}" if query.sweep else "", f"--model {query.model}" if query.model else ""]
    parts += [f"--tag {k}={v}" for k, v in query.tags.items()]
    return " ".join(p for p in parts if p)


def build(query: Query) -> Board:
    """Load, filter, rank; then read per-epoch histories for the shown rows only."""
    client, _ = rq.make_client(query.tracking_uri)
    runs = rq.load_runs(client, rq.experiment_ids(client, [query.experiment]))
    if runs.empty:
        raise rq.StoreError(f"experiment {query.experiment!r} has no runs yet")
    runs = rq.filter_runs(rq.drop_sweep_parents(runs), query.sweep, query.model, query.tags)
    if runs.empty:
        raise rq.StoreError(f"no run of experiment {query.experiment!r} matches {_describe_filters(query)}")
    if f"metrics.{query.by}" not in runs.columns:
        known = sorted(c[len("metrics."):] for c in runs.columns if c.startswith("metrics."))
        raise rq.StoreError(f"no run has a metric {query.by!r}; metrics in these runs: {', '.join(known)}")
    rows = rank_runs(runs, query.by, query.order, query.fold, query.all_status, query.top)
    if rows.empty:
        statuses = runs["status"].value_counts().to_dict()
        raise rq.StoreError(
            f"none of the {len(runs)} runs is FINISHED ({', '.join(f'{k} {v}' for k, v in statuses.items())}); "
            "--all-status lists them"
        )
    keys = ["images_per_s"] + (["val_acc", "elapsed_s"] if query.target is not None else [])
    histories = rq.load_histories(client, [r for ids in rows["run_ids"] for r in ids], keys)
    return Board(add_run_stats(rows, histories, query.target), query, len(runs))


# -- rendering ------------------------------------------------------------------------------------

NUMERIC = {"#", "lr", "epochs", "best_val_acc %", "test_acc %", "reported %", "n", "params", "train time",
           "img/s", "threads"}


def display_frame(board: Board) -> tuple[pd.DataFrame, set[str]]:
    """Strings for people: percentages, ± for folded seeds, short counts and durations."""
    rows, q = board.rows, board.query
    numeric = set(NUMERIC)
    shown = pd.DataFrame({
        "#": [tf.number(r) for r in rows["rank"]],
        "run": rows["run_name"],
        "model": rows["model"].map(lambda v: tf.MISSING if tf.is_missing(v) else v),
        "optimizer": rows["optimizer"].map(lambda v: tf.MISSING if tf.is_missing(v) else v),
        "lr": [tf.number(v) for v in rows["lr"]],
        "schedule": rows["schedule"].map(lambda v: tf.MISSING if tf.is_missing(v) else v),
        "epochs": [tf.number(v) for v in rows["epochs"]],
        "best_val_acc %": _pcts(rows, "best_val_acc"),
        "test_acc %": _pcts(rows, "test_acc"),
        "reported %": [tf.pct(v) if not tf.is_missing(v) else "" for v in rows["reported_acc"]],
        "n": [str(n) for n in rows["n"]],
        "params": [tf.count(v) for v in rows["n_params"]],
        "train time": [tf.seconds(v) for v in rows["train_time_s"]],
        "img/s": [tf.number(v, ",.0f") for v in rows["images_per_s"]],
        "device": rows["device"].map(lambda v: tf.MISSING if tf.is_missing(v) else v),
        "threads": rows["threads"].map(lambda v: tf.MISSING if tf.is_missing(v) else v),
    })
    if q.by not in STAT_METRICS:
        by_fmt = tf.pct if "acc" in q.by else (lambda m, s=math.nan, n=1: tf.number(m, ".4g"))
        shown[q.by] = [by_fmt(m, s, n) for m, s, n in zip(rows[q.by], rows[f"{q.by}_std"], rows["n"])]
        numeric.add(q.by)
    if q.target is not None:
        label = f"@{q.target:g}"
        shown[f"epoch{label}"] = [tf.number(v, ".3g") for v in rows["target_epoch"]]
        shown[f"time{label}"] = [tf.seconds(v) for v in rows["target_time_s"]]
        shown[f"reached{label}"] = [f"{k}/{n}" for k, n in zip(rows["target_reached"], rows["n"])]
        numeric |= {f"epoch{label}", f"time{label}", f"reached{label}"}
    if q.all_status:
        shown["status"] = rows["status"]
        shown["reason"] = rows["failure_reason"].map(lambda v: "" if tf.is_missing(v) else _short(str(v)))
    return shown, numeric


def _pcts(rows: pd.DataFrame, metric: str) -> list[str]:
    return [tf.pct(m, s, n) for m, s, n in zip(rows[metric], rows[f"{metric}_std"], rows["n"])]


def _short(text: str, limit: int = 80) -> str:
    line = tf.clean_text(text).strip()
    return line if len(line) <= limit else line[: limit - 1] + "…"


CSV_COLUMNS = ["rank", "run_name", "model", "optimizer", "lr", "schedule", "epochs", "n", "best_val_acc",
               "best_val_acc_std", "test_acc", "test_acc_std", "reported_acc", "n_params", "train_time_s",
               "images_per_s", "device", "threads"]


def csv_frame(board: Board) -> pd.DataFrame:
    """Raw values (fractions, seconds) for spreadsheets and scripts."""
    rows, q = board.rows, board.query
    cols = list(CSV_COLUMNS)
    if q.by not in STAT_METRICS:
        cols += [q.by, f"{q.by}_std"]
    if q.target is not None:
        cols += ["target_epoch", "target_time_s", "target_reached"]
    if q.all_status:
        cols += ["status", "failure_reason"]
    out = rows[cols].copy()
    out["run_ids"] = rows["run_ids"].map(";".join)
    return out


def title(board: Board) -> str:
    q = board.query
    scope = f"{q.experiment}" + (f" / {_describe_filters(q)}" if _describe_filters(q) else "")
    return f"Leaderboard: {scope}, by {q.by}"


def html_fragment(board: Board) -> str:
    """The escaped <table> alone: the standalone page and the report both embed it."""
    shown, numeric = display_frame(board)
    classes = ["" if s == rq.FINISHED else "not-finished" for s in board.rows["status"]]
    return tf.html_table(shown, numeric, classes, "leaderboard", {"reason": "reason"})


def render(board: Board, fmt: str) -> str:
    if fmt == "csv":
        return tf.csv_text(csv_frame(board))
    if fmt == "html":
        return tf.html_page(title(board), html_fragment(board))
    shown, numeric = display_frame(board)
    text = tf.render_display(shown, fmt, numeric)
    if fmt == "table":
        folded = "seeds folded" if board.query.fold else "not folded"
        text = f"{title(board)} ({board.n_runs} runs, {len(board)} rows, {folded})\n" + text
    return text


# -- command line ---------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cifar-leaderboard",
        description="Rank FINISHED runs by best validation accuracy; repeats differing only by seed fold "
                    "into mean ± std (per device and thread count).",
    )
    rq.add_run_filters(p)
    p.add_argument("--by", default=DEFAULT_METRIC, metavar="METRIC", help="metric to rank by (default: %(default)s)")
    p.add_argument("--order", choices=("auto", "asc", "desc"), default="auto",
                   help="auto: ascending for losses and times, else descending")
    p.add_argument("--top", type=int, metavar="N", help="show the N best rows")
    p.add_argument("--all-status", action="store_true",
                   help="after the ranked rows, list FAILED/KILLED/RUNNING runs with their reason")
    p.add_argument("--no-fold", action="store_true", help="one row per run, seeds not folded")
    p.add_argument("--target", type=float, metavar="ACC",
                   help="add the epoch (0-based, as logged) and wall time (elapsed_s) at which val_acc first "
                        "reached ACC (a fraction, e.g. 0.9); folded rows show means over the runs that reached it")
    p.add_argument("--format", choices=tf.FORMATS, default="table")
    p.add_argument("--out", type=Path, help="write to this file instead of standard output")
    return p


def query_from_args(args: argparse.Namespace) -> Query:
    if args.top is not None and args.top < 1:
        raise rq.StoreError("--top wants a positive number")
    if args.target is not None and not 0 < args.target <= 1:
        raise rq.StoreError(f"--target is an accuracy fraction in (0, 1], got {args.target}")
    return Query(
        tracking_uri=args.tracking_uri, experiment=args.experiment, sweep=args.sweep, model=args.model,
        tags=rq.parse_tag_filters(args.tag), by=args.by, order=args.order, top=args.top,
        all_status=args.all_status, fold=not args.no_fold, target=args.target,
    )


def emit(text: str, out: Path | None) -> None:
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text, encoding="utf-8")
        print(f"wrote {out}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        board = build(query_from_args(args))
    except rq.StoreError as error:
        print(f"cifar-leaderboard: {error}", file=sys.stderr)
        return 1
    emit(render(board, args.format), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
