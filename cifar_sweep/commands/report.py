"""`cifar-report`: one self-contained HTML file about an experiment or sweep.

One section per dataset (real CIFAR-10 first; runs on other data are never ranked with it): its
leaderboard table, overlaid validation-accuracy curves (inline SVG) and the last misclassified grid
of the best runs (PNG, base64-embedded). Inline CSS, no script, no external URL of any kind: the file
opens from disk, from an e-mail attachment or a CI artifact, on a machine without network.

Torch-free, like the leaderboard. The table is the leaderboard's own (`board_view`), built from
`analysis.ranking`: commands never import each other.
"""

from __future__ import annotations

import argparse
import base64
import html
import math
import re
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from cifar_sweep.analysis import histories as hist
from cifar_sweep.analysis import importance, ranking
from cifar_sweep.analysis.sweep_chart import parallel_coordinates_png
from cifar_sweep.commands import board_view, shell
from cifar_sweep.commands import formats as tf
from cifar_sweep.tracking import lookup, queries
from cifar_sweep.tracking.store import open_store

PROG = "cifar-report"

# matplotlib's tab10: distinguishable, and familiar from the MLflow UI's charts.
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf"]
GRID_KEY = "misclassified"  # the image series training logs each epoch (log_image key, step = epoch)
# MLflow's file name for a series image: images/<key>+step+<step>+timestamp+<ms>+<uuid>.png (its
# preview is a `+compressed.webp` beside it). Older runs logged misclassified/epoch_NNN.png files.
SERIES_RE = re.compile(rf"^images/{GRID_KEY}\+step\+(\d+)\+timestamp\+\d+\+[0-9a-f-]+\.png$")
GRID_RE = re.compile(r"epoch_(\d+)\.png$")
MARKER_MAX_POINTS = 30  # runs with this few epochs also get a dot per epoch: one epoch is no line


# -- curves ---------------------------------------------------------------------------------------


def svg_curves(curves: pd.DataFrame, labels: dict[str, str], colors: dict[str, str], metric: str = "val_acc",
               width: int = 900, height: int = 380) -> str:
    """Inline SVG line chart of `metric` by epoch, one polyline per run (no xmlns: HTML5 inline SVG)."""
    left, right, top, bottom = 56, 16, 14, 42
    plot_w, plot_h = width - left - right, height - top - bottom
    max_step = max(int(curves["step"].max()), 1) if len(curves) else 1
    lowest = float(curves[metric].min()) if len(curves) else 0.0
    lowest = min(0.9, lowest) if math.isfinite(lowest) else 0.0
    lo = max(0.0, math.floor(lowest * 10) / 10)  # down to a tenth: small gains stay visible
    hi = 1.0

    def x(step: float) -> float:
        return left + plot_w * step / max_step

    def y(value: float) -> float:
        return top + plot_h * (1 - (value - lo) / (hi - lo))

    out = [f'<svg class="curves" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
           f'aria-label="{html.escape(metric)} by epoch">',
           f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fff" stroke="#999"/>']
    for k in range(round((hi - lo) * 10) + 1):  # a line every 10 points of accuracy
        value = lo + k / 10
        out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y(value):.1f}" y2="{y(value):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 6}" y="{y(value) + 4:.1f}" text-anchor="end" font-size="11">'
                   f"{100 * value:.0f}%</text>")
    tick_every = max(1, round(max_step / 10))
    for step in range(0, max_step + 1, tick_every):
        out.append(f'<text x="{x(step):.1f}" y="{top + plot_h + 16}" text-anchor="middle" font-size="11">{step}</text>')
    out.append(f'<text x="{left + plot_w / 2}" y="{height - 6}" text-anchor="middle" font-size="12">epoch</text>')
    for run_id, part in curves.groupby("run_id", sort=False):
        part = part.sort_values("step")
        xy = [(x(s), y(max(lo, v))) for s, v in zip(part["step"], part[metric]) if v == v]
        points = " ".join(f"{px:.1f},{py:.1f}" for px, py in xy)
        label = html.escape(tf.clean_text(labels.get(run_id, run_id)))
        out.append(f'<polyline fill="none" stroke="{colors[run_id]}" stroke-width="2" points="{points}">'
                   f"<title>{label}</title></polyline>")
        if len(xy) <= MARKER_MAX_POINTS:
            out += [f'<circle class="marker" cx="{px:.1f}" cy="{py:.1f}" r="3.5" fill="{colors[run_id]}">'
                    f"<title>{label}</title></circle>" for px, py in xy]
    out.append("</svg>")
    return "\n".join(out)


def legend(rows: pd.DataFrame, colors: dict[str, str]) -> str:
    items = []
    for row in rows.itertuples(index=False):
        color = colors[row.run_ids[0]]
        rank = "" if tf.is_missing(row.rank) else f"#{row.rank} "
        items.append(f'<li><span class="swatch" style="background:{color}"></span>'
                     f"{html.escape(rank + tf.clean_text(row.run_name))} ({row.device}, n={row.n})</li>")
    return '<ul class="legend">' + "".join(items) + "</ul>"


# -- misclassified grids --------------------------------------------------------------------------


def last_grid(client, run_id: str, tmp: str) -> bytes | None:
    """Bytes of the run's last misclassified grid (the `misclassified` image series, else an older
    run's misclassified/epoch_NNN.png), or None if it logged none."""
    series = lookup.list_artifacts(client, run_id, "images")
    epochs = sorted((int(m.group(1)), name) for name in series if (m := SERIES_RE.match(name)))
    if not epochs:
        names = lookup.list_artifacts(client, run_id, "misclassified")
        epochs = sorted((int(m.group(1)), name) for name in names if (m := GRID_RE.search(name)))
    if not epochs:
        return None
    path = lookup.download(client, run_id, epochs[-1][1], tmp)
    return Path(path).read_bytes()


def img_tag(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


# -- the page -------------------------------------------------------------------------------------

EXTRA_CSS = """
.legend { list-style: none; padding: 0; columns: 2; font-size: 13px; }
.legend li { margin: 2px 0; }
.swatch { display: inline-block; width: 14px; height: 4px; margin-right: 6px; vertical-align: middle; }
figure { display: inline-block; margin: 0 24px 24px 0; vertical-align: top; }
figure img { max-width: 820px; border: 1px solid #ddd; image-rendering: pixelated; }
figcaption { font-size: 13px; margin-bottom: 4px; }
"""


def board_section(client, board: ranking.Board, curves_top: int, grids_top: int, tmp: str) -> list[str]:
    """One dataset's part of the page: its table, the curves of its top rows, their last grids."""
    parts = [f"<h2>{html.escape(ranking.title(board))}</h2>",
             f'<p class="note">{board.n_runs} runs, {len(board)} rows.</p>', board_view.html_fragment(board)]
    ranked = board.rows[board.rows["status"] == ranking.FINISHED]
    curve_rows = ranked.head(curves_top)
    colors, labels = {}, {}
    for i, row in enumerate(curve_rows.itertuples(index=False)):
        for run_id in row.run_ids:  # the seeds of one row share its colour
            colors[run_id], labels[run_id] = PALETTE[i % len(PALETTE)], f"#{row.rank} {row.run_name}"
    histories = queries.load_histories(client, list(colors), ["val_acc"])
    curves = hist.curve(histories, "val_acc")
    parts.append(f"<h3>Validation accuracy by epoch (top {len(curve_rows)} rows)</h3>")
    if curves.empty:
        parts.append('<p class="note">No val_acc history logged by these runs.</p>')
    else:
        parts += [svg_curves(curves, labels, colors), legend(curve_rows, colors)]

    parts.append(f"<h3>Last misclassified grid of the top {min(grids_top, len(ranked))} rows</h3>")
    for row in ranked.head(grids_top).itertuples(index=False):
        caption = html.escape(f"#{row.rank} {tf.clean_text(row.run_name)} (best run {row.run_ids[0][:8]})")
        png = last_grid(client, row.run_ids[0], tmp)
        body = img_tag(png, f"misclassified test images of {row.run_name}") if png else \
            '<p class="note">no misclassified grid logged</p>'
        parts.append(f"<figure><figcaption>{caption}</figcaption>{body}</figure>")
    return parts


# -- a sweep at a glance --------------------------------------------------------------------------


def sweep_glance(client, query: ranking.Query) -> tuple[list[str], list[str]]:
    """(HTML parts, terminal lines): the sweep's parallel-coordinates chart and each swept
    parameter's fANOVA importance for `query.by`, over its finished, unpruned jobs."""
    jobs = ranking.selected_runs(client, query)  # every status: swept_params says what it leaves out
    swept = importance.swept_params(jobs, query.by)
    left = "; ".join(f"{n} {why}" for why, n in swept.left_out.items())
    head = (f"sweep {query.sweep}: {len(jobs)} jobs, {len(swept.values)} finished"
            + (f" ({left}: left out)" if left else ""))
    scales = [f"{n}{' (log)' if swept.log_scale(n) else ''}" for n in swept.numeric] + \
             [f"{n} (text)" for n in swept.text]
    lines = [head, "swept: " + (", ".join(scales) or "nothing differs among the finished jobs")]
    parts = ["<h2>The sweep at a glance</h2>", f'<p class="note">{html.escape(head)}.</p>']
    if swept.names and len(swept.values) >= 2:
        png = parallel_coordinates_png(swept, query.by)
        parts.append(f"<figure><figcaption>Swept parameters against {html.escape(query.by)}, a line per job"
                     f"</figcaption>{img_tag(png, 'parallel coordinates of the sweep')}</figure>")
    why = importance.why_no_importance(swept)
    if why:
        lines.append(f"no parameter importance: {why}")
        parts.append(f'<p class="note">No parameter importance: {html.escape(why)}.</p>')
        return parts, lines
    scores = importance.importances(swept)
    lines.append(f"importance for {query.by} (Optuna fANOVA over {len(swept.values)} jobs):")
    width = max(len(n) for n in scores)
    lines += [f"  {name:<{width}}  {score:5.3f}  {'#' * round(20 * score)}" for name, score in scores.items()]
    rows = "".join(f"<tr><td>{html.escape(name)}</td><td>{score:.3f}</td>"
                   f'<td><span class="swatch" style="width:{round(200 * score)}px;background:{PALETTE[0]}">'
                   "</span></td></tr>" for name, score in scores.items())
    parts.append(f"<h3>Parameter importance for {html.escape(query.by)} (Optuna fANOVA, sums to 1)</h3>"
                 f'<table class="importance"><tr><th>parameter</th><th>importance</th><th></th></tr>{rows}</table>')
    return parts, lines


def build_report(query: ranking.Query, curves_top: int = 10, grids_top: int = 5,
                 glance: list[str] | None = None) -> str:
    """The page; with `query.sweep`, the sweep's chart and importances too (their terminal lines are
    appended to `glance`)."""
    boards = ranking.build_all(query)
    client = open_store(query.tracking_uri)
    n_runs = sum(b.n_runs for b in boards)
    datasets = ", ".join(b.dataset or "(not recorded)" for b in boards)
    parts = [
        f'<p class="note">Store {html.escape(client.tracking_uri)}; {n_runs} runs on {len(boards)} dataset(s): '
        f"{html.escape(datasets)}; generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}. "
        'Accuracies in %; "a ± b" is the mean ± sample std of n runs that differ only by seed (same '
        "device and threads). Each dataset has its own board: runs on different data are never ranked "
        "together.</p>",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for board in boards:
            parts += board_section(client, board, curves_top, grids_top, tmp)
    if query.sweep:
        html_parts, lines = sweep_glance(client, query)
        parts += html_parts
        if glance is not None:
            glance += lines
    scope = query.experiment + (f" / {ranking.describe_filters(query)}" if ranking.describe_filters(query) else "")
    page = tf.html_page(f"cifar_sweep report: {scope}, by {query.by}", "\n".join(parts))
    return page.replace("</style>", EXTRA_CSS + "</style>", 1)


@shell.guarded(PROG)
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Write one self-contained HTML report (leaderboard, validation curves, misclassified grids), "
                    "a section per dataset; with --sweep, also the sweep's parallel-coordinates chart and each "
                    "swept parameter's importance (printed too).",
    )
    shell.add_run_filters(p, data=True)
    p.add_argument("--by", default=ranking.DEFAULT_METRIC, metavar="METRIC")
    p.add_argument("--top", type=int, metavar="N", help="rows in the table (default: all)")
    p.add_argument("--all-status", action="store_true", help="list failed and killed runs too")
    p.add_argument("--curves", type=int, default=10, help="rows whose curves are drawn (default: %(default)s)")
    p.add_argument("--grids", type=int, default=5, help="rows whose last grid is shown (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("report.html"), help="file to write (default: %(default)s)")
    args = p.parse_args(argv)
    query = ranking.Query(tracking_uri=args.tracking_uri, experiment=args.experiment, sweep=args.sweep,
                          model=args.model, tags=shell.parse_tags(args.tag), by=args.by, top=args.top,
                          all_status=args.all_status, data=args.data)
    glance: list[str] = []
    page = build_report(query, args.curves, args.grids, glance)
    if glance:
        print("\n".join(glance), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(page, encoding="utf-8")
    print(f"wrote {args.out} ({len(page) / 1024:.0f} KiB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
