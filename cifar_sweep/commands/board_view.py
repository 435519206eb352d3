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

from cifar_sweep.analysis import confidence as conf
from cifar_sweep.analysis.ranking import FINISHED, STAT_METRICS, Board, speed_note, title
from cifar_sweep.commands import formats as tf

NUMERIC = {"#", "lr", "epochs", "best_val_acc %", "test_acc %", "reported %", "n", "95% CI", "params", "train time",
           "img/s", "threads"}
CSV_COLUMNS = ["data", "rank", "run_name", "model", "optimizer", "lr", "schedule", "epochs", "n", "best_val_acc",
               "best_val_acc_std", "test_acc", "test_acc_std", "reported_acc", "n_params", "train_time_s",
               "images_per_s", "device", "threads", "ci_low", "ci_high", "p_vs_leader", "within_noise"]
SEEDS_HINT = "run more seeds: `cifar-sweep -m ... seed=0,1,2`"


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
        "95% CI": [_interval(lo, hi, q.by) for lo, hi in zip(rows["ci_low"], rows["ci_high"])],
        "vs #1": [_versus(r, p, noise) for r, p, noise in zip(rows["rank"], rows["p_vs_leader"], rows["within_noise"])],
        "params": [tf.count(v) for v in rows["n_params"]],
        "train time": [tf.seconds(v) for v in rows["train_time_s"]],
        "img/s": [tf.number(v, ",.0f") for v in rows["images_per_s"]],
        "device": rows["device"].map(_text),
        "threads": rows["threads"].map(_text),
    })
    if not has_intervals(board):
        shown = shown.drop(columns=["95% CI", "vs #1"])
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


def _interval(low, high, metric: str) -> str:
    if tf.is_missing(low):
        return tf.MISSING
    if "acc" in metric:
        return f"{100 * low:.2f}-{100 * high:.2f}"
    return f"{low:.4g}-{high:.4g}"


def _p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def _versus(rank, p, noise) -> str:
    """The row's gap to the leader: `leader`, `within noise (p=0.41)`, `behind (p=0.003)`, or `—`."""
    if tf.is_missing(rank):
        return ""
    if rank == 1:
        return "leader"
    if tf.is_missing(p) or tf.is_missing(noise):
        return tf.MISSING
    return f"within noise ({_p(p)})" if noise else f"behind ({_p(p)})"


def has_intervals(board: Board) -> bool:
    """Whether any ranked row folded two or more seeds (else the CI and test columns would be empty)."""
    ranked = board.rows[board.rows["rank"].notna()]
    return bool(len(ranked)) and bool((ranked["n"] >= 2).any())


def confidence_notes(board: Board) -> list[str]:
    """What the 95% CI and vs #1 columns are, in a line, or why the board has none."""
    ranked = board.rows[board.rows["rank"].notna()]
    if ranked.empty:
        return []
    if not has_intervals(board):
        if not board.query.fold:
            return ["One run per row (--no-fold): no interval and no test of the lead; fold the seeds to see them."]
        return [f"One seed per row: no interval and no test of the lead; {SEEDS_HINT}."]
    metric = board.query.by
    lines = [f"95% CI: Student's t-interval of the mean {metric} over a row's seeds. vs #1: Welch's t-test "
             f"(two-sided, unequal variances) of the row's seeds against the leader's; p >= {conf.NOISE_P:g}: "
             f"within noise of the leader."]
    if ranked["n"].iloc[0] < 2:
        lines.append(f"The leader (#1) ran one seed: no row can be tested against it; {SEEDS_HINT}.")
    return lines


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


def _notes(board: Board) -> list[str]:
    note = speed_note(board.rows)
    return confidence_notes(board) + ([note] if note else [])


def html_fragment(board: Board) -> str:
    """The escaped <table> and its notes (what the intervals are, shared devices): the standalone
    page and the report both embed it."""
    shown, numeric = display_frame(board)
    classes = ["" if s == FINISHED else "not-finished" for s in board.rows["status"]]
    notes = "".join(f'<p class="note">{html.escape(line)}</p>\n' for line in _notes(board))
    return tf.html_table(shown, numeric, classes, "leaderboard", {"reason": "reason"}) + notes


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
    notes = _notes(board)
    if notes:
        gap = "\n" if fmt == "md" else ""  # a blank line ends the Markdown table before the list
        text = text.rstrip("\n") + "\n" + gap + "".join(("* " if fmt == "md" else "") + line + "\n" for line in notes)
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
