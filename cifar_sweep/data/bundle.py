"""The data contract (Split, DataBundle) and the one place that turns raw splits into it.

Every loader produces two `LabeledImages` (train, test) in a fixed, sorted order and hands them to
`build_bundle`, so class subsetting, the stratified validation split, the shuffled orders and the
normalisation statistics behave identically for every source.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .errors import DataError

PIXELS_PER_CHANNEL = 32 * 32

# Independent random streams per purpose, so e.g. changing val_size never changes the test order.
_STREAM_SPLIT, _STREAM_TRAIN, _STREAM_VAL, _STREAM_TEST = 1, 2, 3, 4


@dataclass(frozen=True, eq=False)
class Split:
    images: torch.Tensor  # uint8, (N, 3, 32, 32), contiguous, one fixed shuffled order
    labels: torch.Tensor  # int64, (N,)
    # Each image's position in the loader's own list (before subsetting and shuffling): the shuffle
    # follows the seed, so two runs name one test image alike only by this.
    source_index: torch.Tensor | None = None

    def __post_init__(self) -> None:
        img, lab = self.images, self.labels
        if img.dtype != torch.uint8 or img.dim() != 4 or tuple(img.shape[1:]) != (3, 32, 32):
            raise ValueError(f"Split.images must be uint8 (N, 3, 32, 32), got {img.dtype} {tuple(img.shape)}")
        if lab.dtype != torch.int64 or lab.shape != (img.shape[0],):
            raise ValueError(f"Split.labels must be int64 ({img.shape[0]},), got {lab.dtype} {tuple(lab.shape)}")
        if not img.is_contiguous():
            raise ValueError("Split.images must be contiguous")

    def __len__(self) -> int:
        return self.labels.shape[0]

    def positions_of(self, source_indices: Sequence[int]) -> torch.Tensor:
        """Where the images at these positions of the loader's list sit in this split's order."""
        if self.source_index is None:
            raise ValueError("this split does not know its images' source positions")
        where = torch.full((int(self.source_index.max()) + 1,), -1, dtype=torch.long)
        where[self.source_index] = torch.arange(len(self.source_index))
        wanted = torch.as_tensor(list(source_indices), dtype=torch.long)
        found = where[wanted.clamp(0, len(where) - 1)]
        if ((wanted >= len(where)) | (found < 0)).any():
            raise ValueError("some source positions are not in this split")
        return found


@dataclass(frozen=True, eq=False)
class DataBundle:
    train: Split
    val: Split  # stratified hold-out of the training set; the test split itself if val_is_test
    test: Split
    classes: list[str]  # label i is classes[i]
    mean: tuple[float, float, float]  # per channel, train split only, 0..255 scale
    std: tuple[float, float, float]
    val_is_test: bool
    source: str  # for logging, e.g. "folder:/abs/cifar10-jpeg.tar.gz (cache hit)"


@dataclass(frozen=True, eq=False)
class LabeledImages:
    """One split as a loader produced it, before subsetting and shuffling.

    `sums`/`sumsq` are exact per-image, per-channel sums of pixel values and of their squares
    (int64, (N, 3)). Loaders compute them once (and the folder cache stores them), so the
    statistics of any train subset cost a row sum instead of a pass over the pixels.
    """

    images: torch.Tensor  # uint8 (N, 3, 32, 32)
    labels: torch.Tensor  # int64 (N,)
    sums: torch.Tensor
    sumsq: torch.Tensor

    @classmethod
    def from_images(cls, images: torch.Tensor, labels: torch.Tensor) -> LabeledImages:
        sums, sumsq = channel_sums(images)
        return cls(images, labels, sums, sumsq)


def channel_sums(images: torch.Tensor | np.ndarray, chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact per-image, per-channel pixel sums and sums of squares (int64, (N, 3)).

    float32 SIMD is several times faster here than integer reductions, and stays exact: each
    channel is summed in blocks of 256 pixels, and 256 * 255**2 < 2**24, so every partial sum is an
    integer float32 represents exactly. Chunking bounds the widened copy whatever N is.
    """
    pixels = images.numpy() if isinstance(images, torch.Tensor) else images
    n = pixels.shape[0]
    blocks = pixels.reshape(n, 3, PIXELS_PER_CHANNEL // 256, 256)
    sums = np.empty((n, 3), dtype=np.int64)
    sumsq = np.empty((n, 3), dtype=np.int64)
    for start in range(0, n, chunk):
        part = blocks[start : start + chunk].astype(np.float32)
        sums[start : start + chunk] = part.sum(axis=3).astype(np.int64).sum(axis=2)
        sumsq[start : start + chunk] = np.einsum("ncbp,ncbp->ncb", part, part).astype(np.int64).sum(axis=2)
    return torch.from_numpy(sums), torch.from_numpy(sumsq)


def mean_std(sums: torch.Tensor, sumsq: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Population mean and std per channel (float64) from per-image sums."""
    count = sums.shape[0] * PIXELS_PER_CHANNEL
    total = sums.sum(dim=0).to(torch.float64)
    total_sq = sumsq.sum(dim=0).to(torch.float64)
    mean = total / count
    var = (total_sq / count - mean * mean).clamp_min(0.0)
    return tuple(float(m) for m in mean), tuple(float(s) for s in var.sqrt())


def build_bundle(
    train: LabeledImages,
    test: LabeledImages,
    classes: list[str],
    *,
    val_size: int,
    subset: Sequence[str] | None,
    seed: int,
    source: str,
) -> DataBundle:
    """Subset classes, hold out a stratified val split, shuffle every split once, compute stats."""
    seed = _check_seed(seed)
    train_idx, test_idx, classes, relabel = _select_classes(train.labels, test.labels, classes, subset)
    val_size = _check_val_size(val_size, len(train_idx), subset is not None)
    train_labels = relabel[train.labels[train_idx]]
    fit_pos, val_pos = stratified_split(train_labels, val_size, len(classes), seed)

    fit_idx = train_idx[_shuffled(fit_pos, seed, _STREAM_TRAIN)]
    mean, std = mean_std(train.sums[fit_idx], train.sumsq[fit_idx])
    fit = _gather(train, fit_idx, relabel)
    test_split = _gather(test, test_idx[_shuffled(np.arange(len(test_idx)), seed, _STREAM_TEST)], relabel)
    if val_size == 0:
        val = test_split
    else:
        val = _gather(train, train_idx[_shuffled(val_pos, seed, _STREAM_VAL)], relabel)
    return DataBundle(
        train=fit, val=val, test=test_split, classes=classes, mean=mean, std=std,
        val_is_test=val_size == 0, source=source,
    )


def stratified_split(labels: torch.Tensor, val_size: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of (train, val) in `labels`; each class gives its share of val_size.

    Shares follow the class sizes (largest remainder), which is an equal share per class when the
    classes are balanced, as in CIFAR-10.
    """
    labels_np = labels.numpy()
    counts = np.bincount(labels_np, minlength=num_classes)
    quotas = _largest_remainder(val_size, counts)
    starved = np.flatnonzero((counts > 0) & (quotas >= counts))
    if len(starved):
        raise DataError(
            f"data.val_size={val_size} would leave class index {starved.tolist()} without training images; "
            f"use a smaller data.val_size, or 0 to validate on the test split"
        )
    rng = np.random.default_rng([seed, _STREAM_SPLIT])
    fit, val = [], []
    for cls in range(num_classes):
        members = rng.permutation(np.flatnonzero(labels_np == cls))
        val.append(members[: quotas[cls]])
        fit.append(members[quotas[cls] :])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(val))


def _largest_remainder(total: int, counts: np.ndarray) -> np.ndarray:
    exact = total * counts / counts.sum()
    quotas = np.floor(exact).astype(np.int64)
    short = total - int(quotas.sum())
    # Ties go to the lower class index (stable sort), so the split is a pure function of the inputs.
    order = np.argsort(-(exact - quotas), kind="stable")
    quotas[order[:short]] += 1
    return quotas


def _select_classes(
    train_labels: torch.Tensor, test_labels: torch.Tensor, classes: list[str], subset: Sequence[str] | None
) -> tuple[np.ndarray, np.ndarray, list[str], torch.Tensor]:
    """Indices of the kept images, the kept class names, and an old->new label lookup table."""
    if subset is None:
        identity = torch.arange(len(classes), dtype=torch.int64)
        return np.arange(len(train_labels)), np.arange(len(test_labels)), list(classes), identity
    names = _check_subset(subset, classes)
    relabel = torch.full((len(classes),), -1, dtype=torch.int64)
    for new, name in enumerate(names):
        relabel[classes.index(name)] = new
    keep_train = np.flatnonzero(relabel[train_labels].numpy() >= 0)
    keep_test = np.flatnonzero(relabel[test_labels].numpy() >= 0)
    return keep_train, keep_test, names, relabel


def _check_subset(subset: Sequence[str], classes: list[str]) -> list[str]:
    if isinstance(subset, str) or not isinstance(subset, Sequence):
        raise DataError(
            f"data.classes must be a list of class names, e.g. data.classes=[{classes[0]},{classes[1]}], "
            f"or null for all; got {subset!r}"
        )
    names = [str(name) for name in subset]
    unknown = [name for name in names if name not in classes]
    if unknown:
        raise DataError(f"data.classes: unknown class {unknown}; valid classes: {classes}")
    if len(set(names)) != len(names):
        raise DataError(f"data.classes lists a class twice: {names}")
    if len(names) < 2:
        raise DataError(f"data.classes needs at least 2 classes to train a classifier, got {names}")
    return names


def _check_val_size(val_size: int, n_train: int, subsetted: bool) -> int:
    if isinstance(val_size, bool) or not isinstance(val_size, (int, np.integer)) or val_size < 0:
        raise DataError(f"data.val_size must be a whole number >= 0 (0 = validate on the test split), got {val_size!r}")
    if val_size >= n_train:
        where = " of the selected classes" if subsetted else ""
        raise DataError(
            f"data.val_size={val_size} must be smaller than the {n_train} training images{where}; "
            f"try data.val_size={n_train // 10}, or data.val_size=0 to validate on the test split"
        )
    return int(val_size)


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"seed must be a whole number >= 0, got {seed!r}")
    return int(seed)


def _shuffled(positions: np.ndarray, seed: int, stream: int) -> np.ndarray:
    return np.random.default_rng([seed, stream]).permutation(positions)


def _gather(data: LabeledImages, idx: np.ndarray, relabel: torch.Tensor) -> Split:
    index = torch.from_numpy(np.ascontiguousarray(idx, dtype=np.int64))
    images = data.images.index_select(0, index)  # a fresh contiguous copy, detached from any mmap
    return Split(images=images, labels=relabel[data.labels.index_select(0, index)], source_index=index)


__all__ = [
    "DataBundle", "DataError", "LabeledImages", "Split", "build_bundle",
    "channel_sums", "mean_std", "stratified_split",
]
