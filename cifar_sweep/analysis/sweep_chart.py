"""A sweep's parallel-coordinates chart: an axis per swept parameter and one for the metric, a line
per finished job, coloured by the metric (the chart MLflow's UI draws, as a PNG for a report).

Each axis is scaled to its own range (log where `SweptParams.log_scale` says so); a text parameter's
axis spaces its values evenly, in sorted order.
"""

from __future__ import annotations

import io
import math

import numpy as np

from cifar_sweep.analysis.importance import SweptParams

MAX_TICKS = 6


def _short(text: str) -> str:
    """A builder's dotted path by its last name (`cifar_sweep.models.keras_tutorial.MLP` -> `MLP`)."""
    return text.rsplit(".", 1)[-1] if "." in text and " " not in text else text


def _axis(swept: SweptParams, name: str) -> tuple[np.ndarray, list[tuple[float, str]]]:
    """(each job's position on the axis in 0..1, the axis ticks as (position, label))."""
    column = swept.values[name]
    if name in swept.text:
        levels = sorted(column.unique())
        spread = max(len(levels) - 1, 1)
        where = {level: i / spread for i, level in enumerate(levels)}
        return column.map(where).to_numpy(float), [(where[v], _short(v)) for v in levels]
    values = column.to_numpy(float)
    log = swept.log_scale(name)
    scaled = np.log10(values) if log else values
    lo, hi = float(scaled.min()), float(scaled.max())
    span = (hi - lo) or 1.0
    distinct = np.unique(values)
    ticks = distinct if len(distinct) <= MAX_TICKS else (
        10 ** np.linspace(lo, hi, MAX_TICKS) if log else np.linspace(lo, hi, MAX_TICKS))
    return (scaled - lo) / span, [(((math.log10(t) if log else t) - lo) / span, f"{t:.3g}") for t in ticks]


def parallel_coordinates_png(swept: SweptParams, metric: str, title: str = "") -> bytes:
    """The chart as PNG bytes (matplotlib, Agg: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    names = swept.names
    axes = [_axis(swept, name) for name in names]
    acc = swept.metric.to_numpy(float)
    lo, hi = float(acc.min()), float(acc.max())
    span = (hi - lo) or 1.0
    metric_ticks = np.unique(np.round(np.linspace(lo, hi, MAX_TICKS), 4))
    axes.append(((acc - lo) / span, [((t - lo) / span, f"{t:.3f}") for t in metric_ticks]))
    labels = [*names, metric]

    fig, ax = plt.subplots(figsize=(max(6.0, 2.2 * len(labels)), 4.8), dpi=100)
    cmap = plt.get_cmap("viridis")
    xs = np.arange(len(labels))
    order = np.argsort(acc)  # the best jobs drawn last, on top
    for i in order:
        ax.plot(xs, [position[i] for position, _ in axes], color=cmap((acc[i] - lo) / span), lw=1.8, alpha=0.85)
    for x, (_, ticks) in zip(xs, axes):
        ax.axvline(x, color="#444", lw=1)
        for position, label in ticks:
            ax.text(x + 0.03, position, label, fontsize=8, va="center", ha="left", color="#222")
    ax.set_xticks(xs, labels, fontsize=9)
    ax.set_xlim(-0.2, len(labels) - 0.6)
    ax.set_ylim(-0.05, 1.05)
    ax.set_yticks([])
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    ax.set_title(title or f"{len(acc)} finished jobs: swept parameters against {metric}", fontsize=10)
    mappable = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(lo, hi))
    fig.colorbar(mappable, ax=ax, pad=0.02, fraction=0.03).set_label(metric, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
