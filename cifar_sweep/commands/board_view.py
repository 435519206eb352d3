"""How a leaderboard `Board` looks: display strings, CSV columns, the HTML fragment, each format.

Shared by `cifar-leaderboard` and `cifar-report` (the report embeds the same table), so it lives in
the shell, beside `formats`, and not in either command: commands never import each other.
The write-ups' rows (`analysis.reported`, `cifar-leaderboard --reported`) look the same way, below.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

import pandas as pd

from cifar_sweep.analysis.ranking import FINISHED, STAT_METRICS, Board, speed_note, title
from cifar_sweep.commands import formats as tf

NUMERIC = {"#", "lr", "epochs", "best_val_acc %", "test_acc %", "reported %", "n", "params", "train time",
           "img/s", "threads"}
CSV_COLUMNS = ["data", "rank", "run_name", "model", "optimizer", "lr", "schedule", "epochs", "n", "best_val_acc",
               "best_val_acc_std", "test_acc", "test_acc_std", "reported_acc", "n_params", "train_time_s",
               "images_per_s", "device", "threads"]


def _text(v) -> str:
    return tf.MISSING if tf.is_missing(v) else v


def display_frame(board: Board) -> tuple[pd.DataFrame, set[str]]:
    """Strings for people: percentages, ± for folded seeds, short counts and durations."""
    rows, q = board.rows, board.query
    numeric = set(NUMERIC)
    shown = pd.DataFrame({
        "#": [tf.number(r) for r in rows["rank"]],
        "run": rows["run_name"],
        "model": rows["model"].map(_text),
        "optimizer": rows["optimizer"].map(_text),
        "lr": [tf.number(v) for v in rows["lr"]],
        "schedule": rows["schedule"].map(_text),
        "epochs": [tf.number(v) for v in rows["epochs"]],
        "best_val_acc %": _pcts(rows, "best_val_acc"),
        "test_acc %": _pcts(rows, "test_acc"),
        "reported %": [tf.pct(v) if not tf.is_missing(v) else "" for v in rows["reported_acc"]],
        "n": [str(n) for n in rows["n"]],
        "params": [tf.count(v) for v in rows["n_params"]],
        "train time": [tf.seconds(v) for v in rows["train_time_s"]],
        "img/s": [tf.number(v, ",.0f") for v in rows["images_per_s"]],
        "device": rows["device"].map(_text),
        "threads": rows["threads"].map(_text),
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
        shown["status"] = rows["status"].map(_text)
        shown["reason"] = rows["failure_reason"].map(lambda v: "" if tf.is_missing(v) else _short(str(v)))
    return shown, numeric


def _pcts(rows: pd.DataFrame, metric: str) -> list[str]:
    return [tf.pct(m, s, n) for m, s, n in zip(rows[metric], rows[f"{metric}_std"], rows["n"])]


def _short(text: str, limit: int = 80) -> str:
    line = tf.clean_text(text).strip()
    return line if len(line) <= limit else line[: limit - 1] + "…"


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
    out = rows.assign(data=board.dataset)[cols].copy()
    out["run_ids"] = rows["run_ids"].map(";".join)
    return out


def html_fragment(board: Board) -> str:
    """The escaped <table> alone: the standalone page and the report both embed it."""
    shown, numeric = display_frame(board)
    classes = ["" if s == FINISHED else "not-finished" for s in board.rows["status"]]
    return tf.html_table(shown, numeric, classes, "leaderboard", {"reason": "reason"})


def _heading(board: Board) -> str:
    """The title and what the rows stand for: the runs they list, and the runs they leave out."""
    folded = "seeds folded" if board.query.fold else "not folded"
    left = ", ".join(f"{n} {status}" for status, n in board.unlisted.items())
    left = f"; not listed: {left} (--all-status lists them)" if left else ""
    return f"{title(board)} ({board.n_runs} runs in {len(board)} rows, {folded}{left})"


def render(board: Board, fmt: str) -> str:
    if fmt == "csv":
        return tf.csv_text(csv_frame(board))
    if fmt == "html":
        return tf.html_page(title(board), html_fragment(board))
    shown, numeric = display_frame(board)
    text = tf.render_display(shown, fmt, numeric)
    if fmt == "table":
        text = _heading(board) + "\n" + text
    note = speed_note(board.rows)
    if note and fmt in ("table", "md"):
        text = text.rstrip("\n") + "\n" + note + "\n"
    return text


def render_boards(boards: Sequence[Board], fmt: str) -> str:
    """Several boards (one per dataset) in one output: a table each, one CSV with a `data` column,
    or one HTML page with a section each."""
    if len(boards) == 1:
        return render(boards[0], fmt)
    if fmt == "csv":
        return tf.csv_text(pd.concat([csv_frame(b) for b in boards], ignore_index=True))
    if fmt == "html":
        body = "".join(f"<h2>{html.escape(_heading(b))}</h2>\n{html_fragment(b)}" for b in boards)
        q = boards[0].query
        return tf.html_page(f"Leaderboards: {q.experiment}, one per dataset, by {q.by}", body)
    if fmt == "md":
        return "\n".join(f"### {tf.clean_text(_heading(b))}\n\n{render(b, fmt)}" for b in boards)
    return "\n".join(render(b, fmt) for b in boards)


# -- the write-ups: reported beside measured (`cifar-leaderboard --reported`) ----------------------

REPORTED_HEADING = "Write-ups: reported beside measured (test accuracy, seeds folded)"
REPORTED_NUMERIC = {"epochs", "reported %", "measured %", "n", "gap (pts)", "train time", "img/s"}


def reported_display_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """Strings for people, one row per preset (`analysis.reported.build`'s rows)."""
    return pd.DataFrame({
        "preset": rows["preset"],
        "write-up": rows["source"].map(_text),
        "model": rows["model"].map(_text),
        "epochs": [tf.number(v) for v in rows["epochs"]],
        "reported %": [tf.pct(v) for v in rows["reported_acc"]],
        "measured %": [tf.pct(m, s, n) for m, s, n in zip(rows["test_acc"], rows["test_acc_std"], rows["n"])],
        "n": [str(n) for n in rows["n"]],
        "gap (pts)": [tf.MISSING if tf.is_missing(g) else f"{g:+.2f}" for g in rows["gap_pts"]],
        "train time": [tf.seconds(v) for v in rows["train_time_s"]],
        "img/s": [tf.number(v, ",.0f") for v in rows["images_per_s"]],
    })


def render_reported(rows: pd.DataFrame, n_runs: int, fmt: str) -> str:
    """The whole `cifar-leaderboard --reported` output in one of `formats.FORMATS`."""
    if fmt == "csv":
        return tf.csv_text(rows.drop(columns=["run_ids"]).assign(run_ids=rows["run_ids"].map(";".join)))
    text = tf.render_display(reported_display_frame(rows), fmt, REPORTED_NUMERIC, title=REPORTED_HEADING)
    if fmt == "table":
        text = f"{REPORTED_HEADING} ({n_runs} runs, {len(rows)} presets)\n" + text
    return text
