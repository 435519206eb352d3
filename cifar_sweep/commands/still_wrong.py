"""`cifar-still-wrong`: the test images that most of the best runs get wrong, as one captioned grid.

Each run logs `misclassified.csv` (every misclassified test index of its final evaluation). For
the top-N runs by best_val_acc this counts, per test index, how many runs missed it and which wrong
answer they gave most often, keeps the images missed by more than `--min-share` of the runs, and
draws them (`analysis.grids`: torchvision `make_grid` for the layout, Pillow for the captions). These are usually
mislabelled, ambiguous or out-of-distribution images: what no hyper-parameter will fix. The grid
goes to `--out`, by default `still_wrong/<experiment>-<data>.png` in the runs folder (beside a
SQLite store), never into the folder the command is run from.

This command needs torch/torchvision for the images; the tallying above does not.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from cifar_sweep.analysis import ranking
from cifar_sweep.commands import shell
from cifar_sweep.tracking import lookup
from cifar_sweep.config.paths import default_tracking_uri, runs_dir
from cifar_sweep.tracking.store import StoreError, open_store, sqlite_path

PROG = "cifar-still-wrong"

ARTIFACT = "misclassified.csv"
TILE = 96      # 32x32 images upscaled 3x (nearest), as in the per-epoch grids
CAPTION = 42   # three caption lines under each tile
PAD = 4


# -- tallying (pandas only) -----------------------------------------------------------------------


def by_source(tables: Mapping[str, pd.DataFrame]) -> bool:
    """Whether every run names its images by their position in the dataset's own list (`source_index`),
    so runs of any seed count together; else only by position in their seed-shuffled split."""
    return bool(tables) and all("source_index" in t for t in tables.values())


def tally(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Per test image: true class, how many runs missed it, the most common wrong answer and its count.

    `index` is the image's `source_index` when every run logged one (see `by_source`), else its
    position in the runs' test split. Runs that disagree on an image's true class did not evaluate
    the same test images (another data config, or seeds that shuffled the split apart): counting
    them together would be meaningless.
    """
    key = "source_index" if by_source(tables) else "index"
    long = pd.concat(
        [t[[key, "true", "pred"]].rename(columns={key: "index"}).assign(run_id=run_id) for run_id, t in tables.items()],
        ignore_index=True,
    )
    if long.empty:
        return pd.DataFrame(columns=["index", "true", "missed_by", "top_pred", "top_pred_count"])
    truths = long.groupby("index")["true"].nunique()
    if (truths > 1).any():
        bad = truths[truths > 1].index[:5].tolist()
        raise StoreError(
            f"the runs disagree on the true class of test images {bad}: their test splits differ "
            "(different data config, or a seed-dependent test order); filter to one data setup with --tag"
        )
    long = long.drop_duplicates(["run_id", "index"])
    missed = long.groupby("index").agg(true=("true", "first"), missed_by=("run_id", "nunique"))
    preds = long.groupby(["index", "pred"]).size().rename("count").reset_index()
    # Most common wrong answer; ties go to the lower class id so the result is stable.
    preds = preds.sort_values(["index", "count", "pred"], ascending=[True, False, True])
    top = preds.drop_duplicates("index").set_index("index")
    missed["top_pred"] = top["pred"]
    missed["top_pred_count"] = top["count"]
    return missed.reset_index()


def pick(counts: pd.DataFrame, n_runs: int, min_share: float = 0.5, limit: int = 64) -> pd.DataFrame:
    """Images missed by more than `min_share` of the runs, most-missed first (then by index)."""
    kept = counts[counts["missed_by"] > min_share * n_runs]
    return kept.sort_values(["missed_by", "index"], ascending=[False, True], kind="stable").head(limit)


def read_misclassified(client, run_ids: Sequence[str]) -> dict[str, pd.DataFrame]:
    """misclassified.csv of each run that has one (older or failed runs may not)."""
    tables = {}
    for run_id in run_ids:
        text = lookup.read_text_or_none(client, run_id, ARTIFACT)
        if text is not None:  # no such artifact: the run is skipped, and the caller says so
            tables[run_id] = pd.read_csv(io.StringIO(text))
    return tables


# -- images (torch) -------------------------------------------------------------------------------


def load_bundle(client, run_id: str):
    """The run's test images, rebuilt from its logged config.yaml exactly as training built them."""
    from omegaconf import OmegaConf

    from cifar_sweep.assembly import load_data

    text = lookup.read_text_or_none(client, run_id, "config.yaml")
    if text is None:
        raise StoreError(f"run {run_id} has no config.yaml artifact to rebuild its test set from")
    cfg = OmegaConf.create(text)
    return load_data(cfg.data, cfg.get("seed", 0))


def render_grid(images, picked: pd.DataFrame, classes: Sequence[str], n_runs: int, nrow: int = 8, positions=None):
    """PIL image: each tile captioned with its true class, how many runs missed it, the usual answer.
    `positions`: where the picked images sit in `images` (default: their `index`)."""
    import torch

    from cifar_sweep.analysis.grids import captioned_grid  # torch: only the drawing needs it

    idx = torch.as_tensor(positions if positions is not None else picked["index"].tolist(), dtype=torch.long)
    captions = [
        [(f"#{row.index} {classes[int(row.true)]}"[:17], (0, 110, 0)),
         (f"missed {row.missed_by}/{n_runs}", (60, 60, 60)),
         (f"as {classes[int(row.top_pred)]} x{row.top_pred_count}"[:17], (190, 0, 0))]
        for row in picked.itertuples(index=False)
    ]
    return captioned_grid(torch.as_tensor(images)[idx], captions, TILE, CAPTION, PAD, nrow=nrow)


# -- command --------------------------------------------------------------------------------------


def default_out(query: ranking.Query, dataset: str) -> Path:
    """`<runs>/still_wrong/<experiment>-<data>.png`: with the store's other outputs (the runs folder
    beside a SQLite store, else the project's), never the folder the command happens to run in."""
    db = sqlite_path(query.tracking_uri or default_tracking_uri())
    runs = db.parent if db is not None else runs_dir()
    stem = "-".join(re.sub(r"[^A-Za-z0-9_.-]+", "_", part).strip("_") for part in (query.experiment, dataset or "data"))
    return runs / "still_wrong" / f"{stem}.png"


def top_runs(query: ranking.Query, top: int) -> ranking.Board:
    """The `top` best individual runs (not folded configs: each run's mistakes count once) of one
    dataset: `query.data`, or the first in the leaderboard's order (real CIFAR-10 first). One test
    split: images of different datasets cannot be tallied together."""
    return ranking.build(dataclasses.replace(query, top=top, fold=False, all_status=False))


def still_wrong(query: ranking.Query, top: int = 10, min_share: float = 0.5, limit: int = 64, bundle=None,
                board: ranking.Board | None = None):
    """(grid image or None, picked rows with class names, n runs counted) for the top runs of `query`
    (`board`: those runs, when the caller has them already)."""
    board = board or top_runs(query, top)
    run_ids = [ids[0] for ids in board.rows["run_ids"]]
    client = open_store(query.tracking_uri)
    tables = read_misclassified(client, run_ids)
    if not tables:
        raise StoreError(f"none of the top {len(run_ids)} runs has a {ARTIFACT} artifact")
    picked = pick(tally(tables), len(tables), min_share, limit)
    if picked.empty:
        return None, picked, len(tables)
    if bundle is None:
        bundle = load_bundle(client, next(r for r in run_ids if r in tables))
    classes = list(bundle.classes)
    picked = picked.assign(true_name=[classes[int(t)] for t in picked["true"]],
                           top_pred_name=[classes[int(p)] for p in picked["top_pred"]])
    positions = bundle.test.positions_of(picked["index"].tolist()) if by_source(tables) else None
    return render_grid(bundle.test.images, picked, classes, len(tables), positions=positions), picked, len(tables)


@shell.guarded(PROG)
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Grid of the test images most of the top-N runs misclassify, with the usual wrong answer.",
    )
    shell.add_run_filters(p, data=True)
    p.add_argument("--top", type=int, default=10, help="how many of the best runs to ask (default: %(default)s)")
    p.add_argument("--min-share", type=float, default=0.5,
                   help="keep images missed by more than this share of those runs (default: %(default)s)")
    p.add_argument("--limit", type=int, default=64, help="at most this many images (default: %(default)s)")
    p.add_argument("--out", type=Path, default=None,
                   help="PNG to write (default: still_wrong/<experiment>-<data>.png in the runs folder: beside "
                        "a SQLite store, else the project's runs/)")
    args = p.parse_args(argv)
    if args.top < 1:
        raise shell.BadOption("--top wants a positive number")
    query = ranking.Query(tracking_uri=args.tracking_uri, experiment=args.experiment, sweep=args.sweep,
                          model=args.model, tags=shell.parse_tags(args.tag), data=args.data)
    board = top_runs(query, args.top)
    others = f" (other data in this store: {', '.join(board.other_datasets)}; --data picks one)" \
        if board.other_datasets else ""
    print(f"{PROG}: the top {len(board)} runs on data {board.dataset or '(not recorded)'}{others}", file=sys.stderr)
    image, picked, n_runs = still_wrong(query, args.top, args.min_share, args.limit, board=board)
    if image is None:
        print(f"no test image is missed by more than {args.min_share:.0%} of the {n_runs} runs", file=sys.stderr)
        return 0
    png = args.out or default_out(query, board.dataset)
    png.parent.mkdir(parents=True, exist_ok=True)
    image.save(png)
    cols = ["index", "true_name", "missed_by", "top_pred_name", "top_pred_count"]
    out = io.StringIO()
    picked[cols].to_string(out, index=False)
    print(out.getvalue())
    print(f"wrote {png}: {len(picked)} images missed by most of {n_runs} runs", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
