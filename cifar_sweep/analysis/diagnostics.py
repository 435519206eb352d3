"""End-of-training diagnostics of a run: per-class accuracy, confusion matrix, PR curves, embedding.

One entry point, `log_test_diagnostics`, called by the training loop after the test evaluation.
The numbers come from the predictions the loop already has (`EvalResult`) and from maintained
metric code (scikit-learn); drawing is left to `analysis.figures`, logging to `RunTracker`. Each diagnostic
has a switch and the figures a pixel cap, so a sweep of 100 runs stays within a few hundred MB.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from cifar_sweep.analysis import figures
from cifar_sweep.config.schema import Diagnostics
from cifar_sweep.data.batches import Standardize, eval_batches
from cifar_sweep.training.device import Hardware
from cifar_sweep.training.engine import EvalResult
from cifar_sweep.tracking.run import RunTracker

log = logging.getLogger(__name__)

def log_test_diagnostics(
    tracker: RunTracker,
    model: nn.Module,
    result: EvalResult,
    test_images_u8: torch.Tensor,
    classes: Sequence[str],
    standardize: Standardize,
    hw: Hardware,
    options: Diagnostics = Diagnostics(),
    source_index: torch.Tensor | None = None,
) -> dict[str, float]:
    """Log every enabled diagnostic of the test split to the run; return the metrics logged.

    `result` must describe `test_images_u8` in the same order (what `engine.evaluate` returns);
    `source_index`, in that order too, is each image's position in the dataset's own test list.
    """
    classes = list(classes)
    sk = _sklearn_metrics()
    metrics: dict[str, float] = {}
    ap: dict[int, float] = {}
    if options.pr_curves and sk is not None:
        ap = _log_pr_curves(tracker, result, classes, sk, options)
        metrics.update(ap_metrics(ap, classes))
    if options.per_class or options.confusion:
        counts = confusion_counts(result, len(classes), sk)
        if options.per_class:
            metrics.update(per_class_accuracy(result, classes))
            tracker.log_text(per_class_table(counts, classes, ap), "per_class.csv")
        if options.confusion:
            _log_confusion(tracker, counts, classes, options)
    if options.misclassified_table:
        tracker.log_text(misclassified_table(result, classes, source_index), "misclassified.csv")
    if options.embedding:
        _log_embedding(tracker, model, result, test_images_u8, classes, standardize, hw, options)
    if metrics:
        tracker.log_metrics(metrics)
    return metrics


def _log_pr_curves(tracker: RunTracker, result: EvalResult, classes: list[str], sk, options: Diagnostics) -> dict[int, float]:
    curves, ap = pr_curves(result, len(classes), sk)
    values = [ap.get(k, float("nan")) for k in range(len(classes))]
    _log_figure(tracker, options, "pr_curves.png",
                lambda: figures.pr_curves_figure(curves, values, classes, options.max_image_pixels))
    return ap


def _log_confusion(tracker: RunTracker, counts: np.ndarray, classes: list[str], options: Diagnostics) -> None:
    tracker.log_text(matrix_csv(counts, classes), "confusion_matrix.csv")
    normalised = figures.row_normalised(counts)
    tracker.log_text(matrix_csv(normalised, classes, "{:.4f}"), "confusion_matrix_normalized.csv")
    _log_figure(tracker, options, "confusion_matrix.png",
                lambda: figures.confusion_figure(counts, classes, options.max_image_pixels))


# ---------------------------------------------------------------- tables and metrics


_UNSAFE = re.compile(r"[^A-Za-z0-9_.\- ]")
# Per-class metrics sit under a prefix and a slash: MLflow's chart view gives each prefix a section
# of its own, so the ten (or more) single-value charts do not push the training curves down.
CLASS_ACC = "class_acc"
CLASS_AP = "class_ap"


def metric_key(prefix: str, name: str) -> str:
    """`<prefix>/<class>`. MLflow metric names allow letters, digits and `_-. /`; anything else in a
    class name (a slash too: it would open a section of its own) becomes `_`."""
    return f"{prefix}/{_UNSAFE.sub('_', name)}"


def per_class_accuracy(result: EvalResult, classes: Sequence[str]) -> dict[str, float]:
    """`class_acc/<class>`: the share of each class's test images predicted correctly (its recall),
    as an exact fraction (count / images, in float64)."""
    labels, preds = result.labels, result.preds
    out = {}
    for k, name in enumerate(classes):
        mask = labels == k
        support = int(mask.sum())
        if support:  # a class absent from the test split has no accuracy, not 0
            out[metric_key(CLASS_ACC, name)] = int((preds[mask] == k).sum()) / support
    return out


def misclassified_table(result: EvalResult, classes: Sequence[str], source_index: torch.Tensor | None = None) -> str:
    """CSV of every misclassified test image, so other views (still-wrong, cifar-diff) can read them.

    `index` is the position in this run's shuffled test split; `source_index` (when known) the
    position in the dataset's own test list, the same image in every run whatever its seed."""
    conf, pred = result.probs.max(1)
    wrong = (pred != result.labels).nonzero().flatten().tolist()
    source = source_index.tolist() if source_index is not None else None
    rows = ["index,true,pred,confidence,true_name,pred_name" + (",source_index" if source else "")]
    for i in wrong:
        t, p = int(result.labels[i]), int(pred[i])
        rows.append(f"{i},{t},{p},{conf[i]:.4f},{classes[t]},{classes[p]}" + (f",{source[i]}" if source else ""))
    return "\n".join(rows) + "\n"


def _sklearn_metrics():
    """scikit-learn's metrics module, or None (then confusion counts fall back to bincount, no PR curves)."""
    try:
        from sklearn import metrics
    except ImportError:
        log.warning("scikit-learn is not installed: no PR curves, AP metrics or t-SNE (pip install scikit-learn)")
        return None
    return metrics


def confusion_counts(result: EvalResult, k: int, sk=None) -> np.ndarray:
    """(k, k) int counts, rows = true class, columns = predicted class."""
    labels, preds = result.labels.numpy(), result.preds.numpy()
    if sk is not None:
        return sk.confusion_matrix(labels, preds, labels=list(range(k)))
    return np.bincount(labels * k + preds, minlength=k * k).reshape(k, k)


def matrix_csv(values: np.ndarray, classes: Sequence[str], fmt: str = "{:d}") -> str:
    """First column the true class, one column per predicted class."""
    lines = ["true\\pred," + ",".join(classes)]
    for name, row in zip(classes, values):
        cells = (fmt.format(int(v)) if fmt == "{:d}" else fmt.format(float(v)) for v in row)
        lines.append(f"{name}," + ",".join(cells))
    return "\n".join(lines) + "\n"


def pr_curves(result: EvalResult, k: int, sk) -> tuple[list[tuple[np.ndarray, np.ndarray]], dict[int, float]]:
    """One-vs-rest (precision, recall) per class and the average precision of the classes present."""
    labels, probs = result.labels.numpy(), result.probs.double().numpy()
    curves, ap = [], {}
    for c in range(k):
        positive = labels == c
        if not positive.any():  # AP is undefined without positives; sklearn would warn and return 0
            curves.append((np.empty(0), np.empty(0)))
            continue
        precision, recall, _ = sk.precision_recall_curve(positive, probs[:, c])
        curves.append((precision, recall))
        ap[c] = float(sk.average_precision_score(positive, probs[:, c]))
    return curves, ap


def ap_metrics(ap: Mapping[int, float], classes: Sequence[str]) -> dict[str, float]:
    out = {metric_key(CLASS_AP, classes[c]): v for c, v in ap.items()}
    if ap:
        out["mean_ap"] = float(np.mean(list(ap.values())))
    return out


def per_class_table(counts: np.ndarray, classes: Sequence[str], ap: Mapping[int, float]) -> str:
    """class,index,support,correct,accuracy,precision,f1,average_precision (accuracy = recall)."""
    support = counts.sum(1)
    correct = np.diag(counts)
    predicted = counts.sum(0)
    lines = ["class,index,support,correct,accuracy,precision,f1,average_precision"]
    for c, name in enumerate(classes):
        acc = correct[c] / support[c] if support[c] else float("nan")
        prec = correct[c] / predicted[c] if predicted[c] else float("nan")
        f1 = 2 * prec * acc / (prec + acc) if support[c] and predicted[c] and (prec + acc) > 0 else float("nan")
        lines.append(f"{name},{c},{support[c]},{correct[c]},{acc:.4f},{prec:.4f},{f1:.4f},{ap.get(c, float('nan')):.4f}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- embedding


def embedding_size(num_images: int, dim: int, options: Diagnostics) -> int:
    """How many test images to embed: the configured number, fewer when float16 features would pass the cap."""
    by_bytes = int(options.embedding_max_mb * 1e6 // (2 * max(dim, 1)))
    return max(1, min(num_images, options.embedding_points, by_bytes))


@torch.no_grad()
def penultimate_features(
    model: nn.Module, images_u8: torch.Tensor, labels: torch.Tensor, standardize: Standardize, hw: Hardware,
    batch_size: int = 500,
) -> torch.Tensor:
    """`model.features` of the images, float32 on the CPU, in eval mode (what the test accuracy saw)."""
    model.eval()
    out = []
    for x, _ in eval_batches(images_u8, labels, batch_size, standardize):
        with hw.autocast():
            out.append(model.features(x).float().flatten(1).cpu())
    return torch.cat(out)


def pca_2d(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First two principal components and their shares of the variance.

    torch's randomized `pca_lowrank`: the two leading components of a (2000, 2304) matrix in well
    under a second, where a full SVD takes several; and the PCA view needs nothing beyond torch.
    Seeded in a forked RNG: the same features give the same picture, and the caller's RNG is untouched.
    """
    x = torch.from_numpy(features).double()
    x = x - x.mean(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        _, s, v = torch.pca_lowrank(x, q=min(12, *x.shape), center=False, niter=7)
    share = (s[:2] ** 2 / (x ** 2).sum().clamp_min(1e-30)).float().numpy()
    return (x @ v[:, :2]).float().numpy(), share


def tsne_2d(features: np.ndarray, seed: int = 0) -> np.ndarray | None:
    try:
        from sklearn.decomposition import PCA
        from sklearn.manifold import TSNE
    except ImportError:
        return None
    # The usual recipe: PCA to 50 dimensions first makes the neighbour search far cheaper.
    x = features.astype(np.float32)
    if x.shape[1] > 50 and len(x) > 50:
        x = PCA(50, random_state=seed).fit_transform(x)
    perplexity = min(30.0, max(2.0, (len(x) - 1) / 3))
    return TSNE(2, init="pca", perplexity=perplexity, max_iter=500, random_state=seed).fit_transform(x)


def _log_embedding(tracker, model, result, images_u8, classes, standardize, hw, options: Diagnostics) -> None:
    if not hasattr(model, "features"):
        log.warning("model %s has no features(): no embedding", type(model).__name__)
        return
    probe = penultimate_features(model, images_u8[:2], result.labels[:2], standardize, hw)
    n = embedding_size(len(result.labels), probe.shape[1], options)
    labels = result.labels[:n]
    features = penultimate_features(model, images_u8[:n], labels.to(images_u8.device), standardize, hw).numpy()
    labels_np = labels.numpy()
    pca, share = pca_2d(features)
    arrays = {"features": features.astype(np.float16), "labels": labels_np, "preds": result.preds[:n].numpy(),
              "index": np.arange(n), "classes": np.array(classes), "pca": pca}
    axes = (f"PC 1 ({share[0]:.0%} of variance)", f"PC 2 ({share[1]:.0%} of variance)")
    _log_figure(tracker, options, "embedding_pca.png",
                lambda: figures.embedding_figure(pca, labels_np, classes, "PCA of penultimate features",
                                                 options.max_image_pixels, axes))
    m = min(n, options.tsne_points)
    if options.tsne and m >= 5:  # t-SNE needs more points than its perplexity
        tsne = tsne_2d(features[:m])
        if tsne is not None:
            arrays["tsne"] = tsne.astype(np.float32)  # rows = the first m points
            _log_figure(tracker, options, "embedding_tsne.png",
                        lambda: figures.embedding_figure(tsne, labels_np[:m], classes, "t-SNE of penultimate features",
                                                         options.max_image_pixels))
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    tracker.log_bytes(buffer.getvalue(), "embedding.npz")


def _log_figure(tracker: RunTracker, options: Diagnostics, path: str, draw) -> None:
    """Draw and log one figure, unless figures are off (`diagnostics.figures`: a sweep's short jobs
    would spend more on drawing than on training; the numbers behind each figure are logged anyway)."""
    if options.figures is False:
        return
    figure = draw()
    # Figures are pyplot-free (see analysis.figures), so dropping the reference frees them; clear() makes it prompt.
    try:
        tracker.log_figure(figure, path)
    finally:
        figure.clear()
