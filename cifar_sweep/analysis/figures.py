"""Figures a run logs: images a person looks at, built from predictions the loop already has.

Pure functions: arrays in, a PIL image or a matplotlib Figure out; nothing here logs or computes
metrics (diagnostics.py does, with scikit-learn).

Image grids are drawn by `grids.captioned_grid` (torchvision's `make_grid` and Pillow): a few
milliseconds per grid, so a grid per epoch costs next to nothing against the epoch itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image
from torchvision.utils import make_grid

from cifar_sweep.analysis.grids import captioned_grid

TILE = 96         # 32x32 images upscaled 3x (nearest) so a person can see them
CAPTION = 28      # band under each tile for "true / pred conf"
PAD = 4
LEGEND = 18       # band above the grid that says which caption colour is which
TRUE_COLOUR, PRED_COLOUR = (0, 110, 0), (190, 0, 0)


def most_confident_mistakes(probs: torch.Tensor, labels: torch.Tensor, limit: int) -> torch.Tensor:
    """Indices of misclassified images, most confident wrong answers first."""
    conf, pred = probs.max(1)
    wrong = (pred != labels).nonzero().flatten()
    order = conf[wrong].argsort(descending=True)
    return wrong[order[:limit]]


def misclassified_grid(
    images: torch.Tensor,
    labels: torch.Tensor,
    probs: torch.Tensor,
    classes: Sequence[str],
    tiles: int = 64,
) -> Image.Image | None:
    """A grid of the most confident mistakes: each tile captioned with true and predicted class.

    `images` are the uint8 (N, 3, 32, 32) images that `probs` and `labels` describe. Returns None
    when nothing was misclassified.
    """
    picked = most_confident_mistakes(probs, labels, tiles)
    if len(picked) == 0:
        return None
    conf, pred = probs[picked].max(1)
    captions = [
        [(classes[t][:15], TRUE_COLOUR), (f"{classes[p][:10]} {c:.0%}", PRED_COLOUR)]
        for t, p, c in zip(labels[picked].tolist(), pred.tolist(), conf.tolist())
    ]
    # A legend band on top: the captions stay short enough for a 96-pixel tile.
    legend = [(PAD + 2, "true class", TRUE_COLOUR),
              (PAD + 70, "predicted class and confidence; most confident mistakes first", PRED_COLOUR)]
    return captioned_grid(images[picked.to(images.device)], captions, TILE, CAPTION, PAD, nrow=8,
                          legend=legend, legend_height=LEGEND)


# ---------------------------------------------------------------- matplotlib figures
#
# Built on `matplotlib.figure.Figure` directly, never pyplot: no global figure registry to leak
# into (a sweep of 100 runs in one process would otherwise keep every figure alive) and no GUI
# backend to pick; saving a bare Figure renders with Agg. Every function takes plain arrays and
# returns a Figure whose dpi is capped so its PNG stays under `max_pixels`.

DEFAULT_MAX_PIXELS = 2_000_000
_DPI = 100


def new_figure(width: float, height: float, max_pixels: int = DEFAULT_MAX_PIXELS, dpi: int = _DPI) -> Figure:
    """A constrained-layout Figure of width x height inches whose PNG has at most max_pixels pixels.

    The dpi is capped at creation, not later: savefig renders at the dpi a Figure was created with.
    """
    dpi = min(dpi, (max_pixels / (width * height)) ** 0.5)
    return Figure(figsize=(width, height), dpi=dpi, layout="constrained")


def confusion_figure(counts: np.ndarray, classes: Sequence[str], max_pixels: int = DEFAULT_MAX_PIXELS) -> Figure:
    """Counts and row-normalised confusion matrix side by side (rows: true class, columns: predicted)."""
    counts = np.asarray(counts)
    normalised = row_normalised(counts)
    k = len(classes)
    side = min(4.0 + 0.45 * k, 12.0)
    fig = new_figure(2 * side + 1.5, side + 0.8, max_pixels)
    left, right = fig.subplots(1, 2)
    _matrix_panel(left, counts, classes, f"counts ({int(counts.sum()):,} test images)", "{:d}", "Blues")
    _matrix_panel(right, normalised, classes, "row-normalised (recall on the diagonal)", "{:.0%}", "Blues", vmax=1.0)
    fig.suptitle("Confusion matrix: rows = true class, columns = predicted class")
    return fig


def row_normalised(counts: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (a class absent from the test set keeps a row of zeros)."""
    rows = counts.sum(1, keepdims=True)
    return np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)


def _matrix_panel(ax, values: np.ndarray, classes, title: str, fmt: str, cmap: str, vmax=None) -> None:
    k = len(classes)
    image = ax.imshow(values, cmap=cmap, vmin=0, vmax=vmax)
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.02)
    ax.set_xticks(range(k), classes, rotation=45, ha="right", fontsize=9)
    ax.set_yticks(range(k), classes, fontsize=9)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if k > 20:  # numbers in 400+ cells are unreadable; the colours and the CSV carry them
        return
    threshold = (vmax if vmax is not None else values.max()) / 2
    for i in range(k):
        for j in range(k):
            v = values[i, j]
            text = fmt.format(int(v)) if fmt == "{:d}" else fmt.format(v)
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if v > threshold else "black")


def pr_curves_figure(
    curves: Sequence[tuple[np.ndarray, np.ndarray]],
    ap: Sequence[float],
    classes: Sequence[str],
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Figure:
    """One precision-recall curve per class (one-vs-rest), its average precision in the legend.

    `curves[k]` is (precision, recall) as sklearn's `precision_recall_curve` returns them; a class
    with no test images has an empty pair and is left out.
    """
    fig = new_figure(9, 7, max_pixels)
    ax = fig.subplots()
    colours = _class_colours(len(classes))
    for k, ((precision, recall), value) in enumerate(zip(curves, ap)):
        if len(precision):
            ax.step(recall, precision, where="post", color=colours[k], lw=1.5, label=f"{classes[k]} (AP {value:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.grid(alpha=0.3)
    shown = [v for (p, _), v in zip(curves, ap) if len(p)]
    mean = f"mean AP {np.mean(shown):.3f}" if shown else "no classes"
    ax.set_title(f"Precision-recall per class (one vs rest), {mean}")
    ax.legend(loc="lower left", fontsize=8 if len(classes) <= 20 else 6, ncol=1 if len(classes) <= 12 else 2)
    return fig


def embedding_figure(
    points: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    title: str,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    axis_labels: tuple[str, str] | None = None,
) -> Figure:
    """A 2-D projection of feature vectors, one colour per class (axes unlabelled unless given: t-SNE's mean nothing)."""
    fig = new_figure(9, 7.5, max_pixels)
    ax = fig.subplots()
    colours = _class_colours(len(classes))
    for k, name in enumerate(classes):
        mask = labels == k
        if mask.any():
            ax.scatter(points[mask, 0], points[mask, 1], s=8, alpha=0.7, color=colours[k], label=name, linewidths=0)
    ax.set_title(f"{title} ({len(labels):,} test images)")
    ax.set_xticks([])
    ax.set_yticks([])
    if axis_labels:
        ax.set_xlabel(axis_labels[0])
        ax.set_ylabel(axis_labels[1])
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), markerscale=2.5, fontsize=9, frameon=False)
    return fig


def _class_colours(k: int) -> list:
    name = "tab10" if k <= 10 else "tab20" if k <= 20 else "turbo"
    cmap = matplotlib.colormaps[name]
    return [cmap(i if k <= 20 else i / max(k - 1, 1)) for i in range(k)]


def featuremap_figure(
    maps: torch.Tensor,
    title: str,
    total_channels: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    size: tuple[int, int] | None = None,
) -> Figure:
    """A grid of one conv layer's channel activations (C, H, W), each channel scaled to its own range.

    `total_channels` and `size` describe the layer's real output when `maps` holds fewer channels
    or was downsampled to fit the pixel budget; the title says so.

    Per-channel scaling shows *where* each filter responds; the absolute size of activations is not
    comparable across channels anyway once a batchnorm follows.
    """
    maps = maps.detach().float().cpu()
    lo = maps.amin(dim=(1, 2), keepdim=True)
    hi = maps.amax(dim=(1, 2), keepdim=True)
    scaled = (maps - lo) / (hi - lo).clamp_min(1e-12)
    c, h, w = scaled.shape
    nrow = math.ceil(math.sqrt(c * h / w))  # about square overall, whatever the tile aspect
    pad = max(1, round(max(h, w) / 32))
    # NaN padding is drawn as the colormap's "bad" colour (white), so the gaps never read as activations.
    grid = make_grid(scaled.unsqueeze(1), nrow=nrow, padding=pad, pad_value=float("nan"))[0]
    gh, gw = grid.shape
    # About one screen pixel per grid pixel (the caller sized the tiles to the budget), so the
    # maps are not resampled twice; 8 inches at least, so the title fits.
    width = min(max(gw / _DPI, 8.0), 20.0)
    fig = new_figure(width, width * gh / gw + 0.8, max_pixels)
    ax = fig.subplots()
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="white")
    ax.imshow(grid.numpy(), cmap=cmap, vmin=0, vmax=1, interpolation="nearest" if h < 64 else "antialiased")
    ax.set_axis_off()
    shown = f"{c} of {total_channels} channels" if total_channels and total_channels > c else f"{c} channels"
    rh, rw = size or (h, w)
    scaled_note = f", shown at {h}x{w}" if (rh, rw) != (h, w) else ""
    ax.set_title(f"{title}\n{shown}, each {rh}x{rw}{scaled_note}; own colour scale per channel (yellow = strongest)",
                 fontsize=10, wrap=True)
    return fig
