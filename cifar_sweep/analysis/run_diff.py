"""What two runs differ in: config keys, final metrics, per-epoch curves, the test images one gets
right and the other wrong.

Torch-free (pandas and matplotlib's Agg canvas): `cifar-diff` reads everything from what the runs
logged. The per-image part compares the runs' `misclassified.csv` (every wrong test index of the
final evaluation): those indices are positions in the run's own shuffled test split, and the
shuffle follows the seed, so they name the same images only when both runs loaded the same data
with the same seed.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd

# The numbers a run ends with, in the order a reader compares them; a run may lack some.
SUMMARY_METRICS = ("best_val_acc", "test_acc", "test_loss", "best_epoch", "train_time_s",
                   "steady_epoch_time_s", "images_per_s", "seconds/total")
# Higher is better for these; lower for the rest of SUMMARY_METRICS that measure a cost.
ACCURACIES = ("best_val_acc", "test_acc")
CURVE_KEYS = ("val_acc", "train_loss")
# Params the run derives from its data (not set by anyone): they differ when the data differ,
# which the data keys already say.
DERIVED_PARAMS = ("data.mean", "data.std")
# Data keys that do not change which images a split holds, nor their order.
_SPLIT_NEUTRAL = ("data.root", "data.cache_dir", "data.augment", *DERIVED_PARAMS)
MISSING = "—"


# -- config ---------------------------------------------------------------------------------------


def config_diff(params_a: Mapping[str, str], params_b: Mapping[str, str]) -> pd.DataFrame:
    """key, A, B of every param whose value differs (MISSING where a run lacks the key), sorted."""
    rows = []
    for key in sorted(set(params_a) | set(params_b)):
        if key in DERIVED_PARAMS:
            continue
        a, b = params_a.get(key, MISSING), params_b.get(key, MISSING)
        if a != b:
            rows.append((key, a, b))
    return pd.DataFrame(rows, columns=["key", "A", "B"])


def flat_params(config: Mapping) -> dict[str, str]:
    """A logged config.yaml as MLflow params (flattened, text): for runs whose params are missing."""
    from cifar_sweep.config.identity import flatten

    return {k: str(v) for k, v in flatten({k: v for k, v in config.items() if k != "paths"}).items()}


# -- metrics --------------------------------------------------------------------------------------


def metric_diff(metrics_a: Mapping[str, float], metrics_b: Mapping[str, float],
                keys=SUMMARY_METRICS) -> pd.DataFrame:
    """metric, A, B, B - A for each summary metric either run logged (NaN where one did not)."""
    rows = []
    for key in keys:
        if key not in metrics_a and key not in metrics_b:
            continue
        a, b = float(metrics_a.get(key, float("nan"))), float(metrics_b.get(key, float("nan")))
        rows.append((key, a, b, b - a))
    return pd.DataFrame(rows, columns=["metric", "A", "B", "B - A"])


# -- curves ---------------------------------------------------------------------------------------


def curves(histories: pd.DataFrame, run_a: str, run_b: str, keys=CURVE_KEYS) -> pd.DataFrame:
    """One row per epoch: `<key> A`, `<key> B` for each key (the long frame of queries.load_histories)."""
    wide = histories[histories["key"].isin(keys) & histories["run_id"].isin([run_a, run_b])]
    wide = wide.assign(side=wide["run_id"].map({run_a: "A", run_b: "B"}))
    table = wide.pivot_table(index="step", columns=["key", "side"], values="value", aggfunc="last")
    columns = [(k, s) for k in keys for s in ("A", "B")]
    table = table.reindex(columns=pd.MultiIndex.from_tuples(columns))
    table.columns = [f"{k} {s}" for k, s in columns]
    return table.rename_axis("epoch").reset_index()


def curves_png(table: pd.DataFrame, label_a: str, label_b: str, keys=CURVE_KEYS) -> bytes:
    """One figure, a panel per key, both runs in each: PNG bytes (matplotlib's Agg canvas, no pyplot)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(5 * len(keys), 3.6), dpi=100, layout="constrained")
    for i, key in enumerate(keys):
        ax = fig.add_subplot(1, len(keys), i + 1)
        for side, label, style in (("A", label_a, "-o"), ("B", label_b, "--s")):
            column = f"{key} {side}"
            if column in table and table[column].notna().any():
                ax.plot(table["epoch"], table[column], style, markersize=3, label=f"{side}: {label}"[:48])
        ax.set_title(key)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# -- images ---------------------------------------------------------------------------------------


@dataclass
class ImageDiff:
    """Test images by who gets them right; empty frames and a `note` when they cannot be compared."""

    a_right_b_wrong: pd.DataFrame  # index, true, true_name, pred, pred_name (B's wrong answer)
    b_right_a_wrong: pd.DataFrame  # the same with A's wrong answer
    both_wrong: int = 0
    note: str = ""
    by_source: bool = False  # `index` is the image's position in the dataset's own list, not in a split

    @property
    def compared(self) -> bool:
        return not self.note


def split_mismatch(params_a: Mapping[str, str], params_b: Mapping[str, str]) -> str:
    """Why the two runs' test positions name different images ('' when they name the same ones)."""
    if params_a.get("seed") != params_b.get("seed"):
        return (f"the runs shuffled their test splits with different seeds ({params_a.get('seed')} vs "
                f"{params_b.get('seed')}), so misclassified.csv's positions name different images")
    keys = {k for k in set(params_a) | set(params_b)
            if k.startswith("data.") and not any(k == n or k.startswith(n + ".") for n in _SPLIT_NEUTRAL)}
    differ = sorted(k for k in keys if params_a.get(k) != params_b.get(k))
    if differ:
        return f"the runs loaded different test splits ({', '.join(differ)} differ)"
    return ""


def by_source(wrong_a: pd.DataFrame | None, wrong_b: pd.DataFrame | None, digest_a: str | None,
              digest_b: str | None) -> bool:
    """Whether the runs' mistakes can be matched image by image whatever their seeds: both name each
    image by its position in the dataset's own list (`source_index`) and trained on the same images
    (equal `dataset_digest`, which ignores order, so the seed's shuffle leaves it alone)."""
    return (wrong_a is not None and wrong_b is not None and "source_index" in wrong_a and "source_index" in wrong_b
            and bool(digest_a) and digest_a == digest_b)


def _keyed_by_source(table: pd.DataFrame) -> pd.DataFrame:
    return table.drop(columns=["index"]).rename(columns={"source_index": "index"})


def image_diff(wrong_a: pd.DataFrame | None, wrong_b: pd.DataFrame | None, mismatch: str = "",
               same_source: bool = False) -> ImageDiff:
    """Compare two misclassified.csv tables (None: the run logged none) of one test split.

    With `same_source` (see `by_source`) images are matched by `source_index`, and `index` in the
    result is that position in the dataset's own list; otherwise by position in the shared split."""
    empty = pd.DataFrame(columns=["index", "true", "true_name", "pred", "pred_name"])
    missing = [side for side, table in (("A", wrong_a), ("B", wrong_b)) if table is None]
    if missing:
        return ImageDiff(empty, empty, note=f"run {' and '.join(missing)} logged no misclassified.csv "
                                            "(diagnostics.misclassified_table=false, a failed run or an older "
                                            "version): no per-image comparison")
    if same_source:
        wrong_a, wrong_b = _keyed_by_source(wrong_a), _keyed_by_source(wrong_b)
    elif mismatch:
        return ImageDiff(empty, empty, note=mismatch + ": no per-image comparison")
    both = wrong_a.merge(wrong_b, on="index", suffixes=("_a", "_b"))
    if (both["true_a"] != both["true_b"]).any():
        return ImageDiff(empty, empty, note="the runs disagree on the true class of some test images: their "
                                            "test splits differ, no per-image comparison")
    cols = [c for c in ("index", "true", "true_name", "pred", "pred_name") if c in wrong_a and c in wrong_b]
    only_b = wrong_b[~wrong_b["index"].isin(wrong_a["index"])].sort_values("index")[cols]
    only_a = wrong_a[~wrong_a["index"].isin(wrong_b["index"])].sort_values("index")[cols]
    return ImageDiff(only_b.reset_index(drop=True), only_a.reset_index(drop=True), both_wrong=len(both),
                     by_source=same_source)


def read_misclassified(text: str | None) -> pd.DataFrame | None:
    return None if text is None else pd.read_csv(io.StringIO(text))
