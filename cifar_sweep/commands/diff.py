"""`cifar-diff RUN RUN`: what two runs differ in, side by side.

The config keys whose values differ (from the runs' params, else their config.yaml), the final
metrics with B - A, both runs' val_acc and train_loss per epoch (numbers in the terminal; one
figure in HTML), and the test images one run gets right and the other wrong (from each run's
misclassified.csv). Runs on different datasets do not compare: refused unless `--force`.

Torch-free, except `--format html`, which draws some of those images from the runs' test split
(rebuilt from run A's config.yaml, as `cifar-still-wrong` does) when the data is on this machine.
"""

from __future__ import annotations

import argparse
import base64
import html
import sys
from pathlib import Path

import pandas as pd

from cifar_sweep.analysis import run_diff as rd
from cifar_sweep.commands import formats as tf
from cifar_sweep.commands import shell
from cifar_sweep.errors import CifarSweepError
from cifar_sweep.tracking import lookup, queries
from cifar_sweep.tracking.store import open_store

PROG = "cifar-diff"
GRID_IMAGES = 16  # per side in HTML: enough to see a pattern, small enough to embed
TILE, CAPTION, PAD = 96, 30, 4


class DiffRefused(CifarSweepError, ValueError):
    """Two runs that do not compare (another dataset): said in one line, exit status 2."""


# -- reading --------------------------------------------------------------------------------------


def dataset_of(run) -> str:
    """The run's dataset, as the leaderboard names it (its tag, else what its data params say)."""
    row = {**{f"tags.{k}": v for k, v in run.data.tags.items()},
           **{f"params.{k}": v for k, v in run.data.params.items()}}
    return str(queries.dataset_column(pd.DataFrame([row])).iloc[0] or "")


def params_of(client, run) -> dict[str, str]:
    """The run's params; its config.yaml flattened when it logged none (params too long, another tool)."""
    if run.data.params:
        return dict(run.data.params)
    text = lookup.read_text_or_none(client, run.info.run_id, "config.yaml")
    if text is None:
        return {}
    import yaml

    return rd.flat_params(yaml.safe_load(text) or {})


def gather(client, run_a, run_b) -> dict:
    """Every table of the diff, from what the two runs logged."""
    ids = (run_a.info.run_id, run_b.info.run_id)
    params_a, params_b = params_of(client, run_a), params_of(client, run_b)
    histories = queries.load_histories(client, ids, rd.CURVE_KEYS)
    wrong = [rd.read_misclassified(lookup.read_text_or_none(client, i, "misclassified.csv")) for i in ids]
    digests = [run.data.tags.get("dataset_digest") for run in (run_a, run_b)]
    same_source = rd.by_source(*wrong, *digests)
    return {
        "config": rd.config_diff(params_a, params_b),
        "metrics": rd.metric_diff(run_a.data.metrics, run_b.data.metrics),
        "curves": rd.curves(histories, *ids),
        "images": rd.image_diff(*wrong, mismatch=rd.split_mismatch(params_a, params_b), same_source=same_source),
    }


# -- display --------------------------------------------------------------------------------------


def _metric_cell(metric: str, value: float, signed: bool = False) -> str:
    if tf.is_missing(value):
        return tf.MISSING
    sign = "+" if signed else ""
    if metric in rd.ACCURACIES:
        return f"{100 * value:{sign}.2f}%" if not signed else f"{100 * value:+.2f} pt"
    if metric == "best_epoch":
        return f"{value:{sign}.0f}"
    if metric == "images_per_s":
        return f"{value:{sign},.0f}"
    if metric.endswith("_s") or metric.startswith("seconds/"):
        return f"{value:{sign}.2f} s"
    return f"{value:{sign},.4g}"


def metric_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "metric": metrics["metric"],
        "A": [_metric_cell(m, v) for m, v in zip(metrics["metric"], metrics["A"])],
        "B": [_metric_cell(m, v) for m, v in zip(metrics["metric"], metrics["B"])],
        "B - A": [_metric_cell(m, v, signed=True) for m, v in zip(metrics["metric"], metrics["B - A"])],
    })


def curve_rows(curves: pd.DataFrame) -> pd.DataFrame:
    shown = curves.copy()
    for col in shown.columns[1:]:
        shown[col] = [tf.MISSING if tf.is_missing(v) else f"{v:.4f}" for v in shown[col]]
    shown["epoch"] = shown["epoch"].astype(int).astype(str)
    return shown


def differ_text(n: int) -> str:
    return "1 key differs" if n == 1 else f"{n} keys differ"


def image_line(images: rd.ImageDiff) -> str:
    if not images.compared:
        return f"per image: {images.note}"
    return (f"per image (final test evaluation): A right & B wrong: {len(images.a_right_b_wrong)}; "
            f"B right & A wrong: {len(images.b_right_a_wrong)}; both wrong: {images.both_wrong}")


def head_lines(run_a, run_b, dataset: str) -> list[str]:
    return [f"{side}: {run.info.run_id[:8]} {tf.clean_text(run.info.run_name or '')} ({run.info.status})"
            for side, run in (("A", run_a), ("B", run_b))] + [f"data: {dataset or '(not recorded)'}"]


def render_text(parts: dict, heads: list[str], fmt: str) -> str:
    """The terminal table (`table`) or Markdown (`md`): four sections, the curves as numbers."""
    def section(title: str, frame: pd.DataFrame, numeric: set[str], empty: str) -> str:
        body = tf.render_display(frame, fmt, numeric) if len(frame) else f"{empty}\n"
        return (f"## {title}\n\n" if fmt == "md" else f"{title}\n") + body

    config = parts["config"]
    sep = "\n" if fmt == "md" else ""
    blocks = [
        "\n".join(f"- {h}" if fmt == "md" else h for h in heads) + "\n",
        section(f"config: {differ_text(len(config))}", config, set(),
                "(the same config)"),
        section("metrics", metric_rows(parts["metrics"]), {"A", "B", "B - A"}, "(no summary metrics logged)"),
        section("per epoch", curve_rows(parts["curves"]), set(parts["curves"].columns), "(no per-epoch metrics)"),
        image_line(parts["images"]) + "\n",
    ]
    return ("\n" + sep).join(blocks)


def _img(png: bytes, alt: str) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}" alt="{html.escape(alt)}">'


def image_grid_png(client, run_a, table: pd.DataFrame, wrong_side: str, by_source: bool = False) -> bytes | None:
    """Some of the images one run gets wrong, captioned with the truth and the wrong answer (torch)."""
    import io

    import torch
    from omegaconf import OmegaConf

    from cifar_sweep.analysis.grids import captioned_grid
    from cifar_sweep.assembly import load_data

    text = lookup.read_text(client, run_a.info.run_id, "config.yaml")
    cfg = OmegaConf.create(text)
    bundle = load_data(cfg.data, cfg.get("seed", 0))
    shown = table.head(GRID_IMAGES)
    index = shown["index"].astype(int).tolist()
    idx = bundle.test.positions_of(index) if by_source else torch.tensor(index, dtype=torch.long)
    classes = list(bundle.classes)
    captions = [[(f"#{int(r.index)} {classes[int(r.true)]}"[:17], (0, 110, 0)),
                 (f"{wrong_side}: {classes[int(r.pred)]}"[:17], (190, 0, 0))] for r in shown.itertuples(index=False)]
    image = captioned_grid(bundle.test.images[idx], captions, TILE, CAPTION, PAD, nrow=8)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def render_html(parts: dict, heads: list[str], client, run_a, run_b, title: str) -> str:
    metrics = metric_rows(parts["metrics"])
    body = ["<ul>" + "".join(f"<li>{html.escape(h)}</li>" for h in heads) + "</ul>"]
    config = parts["config"]
    body.append(f"<h2>config: {differ_text(len(config))}</h2>")
    body.append(tf.html_table(config, set()) if len(config) else '<p class="note">the same config</p>')
    body.append("<h2>metrics</h2>" + tf.html_table(metrics, {"A", "B", "B - A"}))
    curves = parts["curves"]
    body.append("<h2>per epoch</h2>")
    if len(curves):
        png = rd.curves_png(curves, (run_a.info.run_name or run_a.info.run_id[:8]),
                            (run_b.info.run_name or run_b.info.run_id[:8]))
        body.append(f"<p>{_img(png, 'val_acc and train_loss per epoch of both runs')}</p>")
        body.append(tf.html_table(curve_rows(curves), set(curves.columns)))
    else:
        body.append('<p class="note">no per-epoch metrics logged</p>')
    images = parts["images"]
    body.append(f"<h2>per image</h2><p>{html.escape(image_line(images))}</p>")
    if images.compared:
        for table, wrong_side, label in ((images.a_right_b_wrong, "B", "A right, B wrong"),
                                         (images.b_right_a_wrong, "A", "B right, A wrong")):
            if not len(table):
                continue
            try:
                png = image_grid_png(client, run_a, table, wrong_side, images.by_source)
            except (ImportError, CifarSweepError, OSError, ValueError) as err:
                body.append(f'<p class="note">{html.escape(label)}: no images ({html.escape(shell.one_line(err))})</p>')
                continue
            shown = min(len(table), GRID_IMAGES)
            body.append(f"<h3>{html.escape(label)}: {shown} of {len(table)}</h3><p>{_img(png, label)}</p>")
    return tf.html_page(title, "\n".join(body) + "\n")


# -- command --------------------------------------------------------------------------------------


def diff(client, ref_a: str, ref_b: str, fmt: str = "table", force: bool = False, where: str = "this store") -> str:
    run_a, run_b = shell.resolve_run(client, ref_a, where), shell.resolve_run(client, ref_b, where)
    data_a, data_b = dataset_of(run_a), dataset_of(run_b)
    if data_a != data_b and not force:
        raise DiffRefused(f"runs {run_a.info.run_id[:8]} and {run_b.info.run_id[:8]} trained on different datasets "
                          f"({data_a or '(not recorded)'} vs {data_b or '(not recorded)'}): their numbers do not "
                          "compare", hint="; --force diffs them anyway")
    dataset = data_a if data_a == data_b else f"{data_a} vs {data_b}"
    parts = gather(client, run_a, run_b)
    heads = head_lines(run_a, run_b, dataset)
    if fmt == "html":
        title = f"{PROG} {run_a.info.run_id[:8]} {run_b.info.run_id[:8]}"
        return render_html(parts, heads, client, run_a, run_b, title)
    return render_text(parts, heads, fmt)


@shell.guarded(PROG)
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Two runs side by side: the config keys that differ, the final metrics and B - A, "
                    "val_acc and train_loss per epoch, and the test images one gets right and the other wrong.",
    )
    p.add_argument("run_a", metavar="RUN_A", help="a run id or the start of one (the 8 characters summaries print)")
    p.add_argument("run_b", metavar="RUN_B", help="the run to compare it with")
    shell.add_store_options(p, experiment=False)
    p.add_argument("--format", choices=("table", "md", "html"), default="table",
                   help="table (default) and md: numbers per epoch; html: one page with the curves as one "
                        "figure and grids of the images the runs disagree on")
    p.add_argument("--out", type=Path, help="write to this file instead of standard output")
    p.add_argument("--force", action="store_true", help="diff runs on different datasets too")
    args = p.parse_args(argv)
    try:
        client = open_store(args.tracking_uri)
        text = diff(client, args.run_a, args.run_b, args.format, args.force, args.tracking_uri or "this store")
    except CifarSweepError as err:  # the user's to fix (no such run, other dataset): exit status 2
        print(f"{PROG}: {err.one_line()}", file=sys.stderr)
        return 2
    shell.emit(text, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
