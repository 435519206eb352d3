"""Synthetic data and what every bundle gets: splits, class subsets, val_size, mean and std."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from cifar_sweep.data import DataError, load_synthetic
from cifar_sweep.data.bundle import mean_std, stratified_split
from data_trees import assert_same_bundle, rows


# ---------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_and_seed_dependent():
    a, b, c = load_synthetic(seed=3), load_synthetic(seed=3), load_synthetic(seed=4)
    assert_same_bundle(a, b)
    assert not torch.equal(a.train.images, c.train.images)


def test_synthetic_shapes_dtypes_and_sizes():
    start = time.perf_counter()
    bundle = load_synthetic(n_train=2000, n_test=500, val_size=500)
    assert time.perf_counter() - start < 1.0  # about 0.1 s; generous for a loaded CI machine
    for split, n in (("train", 1500), ("val", 500), ("test", 500)):
        s = getattr(bundle, split)
        assert s.images.shape == (n, 3, 32, 32) and s.images.dtype == torch.uint8 and s.images.is_contiguous()
        assert s.labels.shape == (n,) and s.labels.dtype == torch.int64
    assert bundle.classes[:2] == ["airplane", "automobile"] and len(bundle.classes) == 10
    assert not bundle.val_is_test and bundle.source.startswith("synthetic:")


def test_synthetic_val_is_stratified_and_disjoint_from_train():
    bundle = load_synthetic(n_train=2000, val_size=500)
    assert torch.bincount(bundle.val.labels, minlength=10).tolist() == [50] * 10
    assert torch.bincount(bundle.train.labels, minlength=10).tolist() == [150] * 10
    assert not rows(bundle.train.images) & rows(bundle.val.images)


def test_every_split_is_shuffled():
    bundle = load_synthetic()
    for split in (bundle.train, bundle.val, bundle.test):
        assert len(set(split.labels[:20].tolist())) > 3  # class-sorted order would give one class


def test_synthetic_is_learnable_but_not_trivial():
    """Nearest class mean on raw pixels (what a linear model can do): well above chance, below 100%."""
    bundle = load_synthetic()
    x, y = bundle.train.images.flatten(1).double(), bundle.train.labels
    centroids = torch.stack([x[y == c].mean(0) for c in range(10)])
    pred = torch.cdist(bundle.val.images.flatten(1).double(), centroids).argmin(1)
    accuracy = (pred == bundle.val.labels).double().mean().item()
    assert 0.35 < accuracy < 0.95


def test_mean_std_match_a_direct_float64_computation():
    bundle = load_synthetic()
    x = bundle.train.images.double()
    assert np.allclose(bundle.mean, x.mean(dim=(0, 2, 3)).tolist(), atol=1e-9)
    assert np.allclose(bundle.std, x.std(dim=(0, 2, 3), unbiased=False).tolist(), atol=1e-9)


def test_mean_std_extremes_are_exact():
    white = torch.full((4, 3), 255 * 1024, dtype=torch.int64), torch.full((4, 3), 255**2 * 1024, dtype=torch.int64)
    assert mean_std(*white) == ((255.0,) * 3, (0.0,) * 3)


# ---------------------------------------------------------------- classes and val_size


def test_class_subset_reindexes_labels_in_the_given_order():
    full = load_synthetic()
    sub = load_synthetic(classes=["cat", "airplane"], val_size=100)
    assert sub.classes == ["cat", "airplane"]
    assert set(sub.test.labels.tolist()) == {0, 1}
    assert rows(sub.test.images[sub.test.labels == 0]) == rows(full.test.images[full.test.labels == 3])
    assert rows(sub.test.images[sub.test.labels == 1]) == rows(full.test.images[full.test.labels == 0])


def test_class_subset_accepts_an_omegaconf_list():
    from omegaconf import OmegaConf

    sub = load_synthetic(classes=OmegaConf.create({"c": ["cat", "dog"]}).c, val_size=100)
    assert sub.classes == ["cat", "dog"]


@pytest.mark.parametrize(
    ("classes", "match"),
    [
        (["cat", "unicorn"], r"unknown class \['unicorn'\]; valid classes: \['airplane', 'automobile'"),
        ("cat", "must be a list of class names"),
        (["cat", "cat"], "lists a class twice"),
        (["cat"], "at least 2 classes"),
    ],
)
def test_bad_class_subsets_are_refused(classes, match):
    with pytest.raises(DataError, match=match):
        load_synthetic(classes=classes)


def test_val_size_zero_validates_on_test():
    bundle = load_synthetic(val_size=0)
    assert bundle.val_is_test and bundle.val is bundle.test and len(bundle.train) == 2000


@pytest.mark.parametrize(("val_size", "match"), [(2000, "must be smaller than the 2000 training images"), (-1, ">= 0"), (0.5, "whole number")])
def test_bad_val_sizes_are_refused(val_size, match):
    with pytest.raises(DataError, match=match):
        load_synthetic(val_size=val_size)


def test_val_size_may_not_empty_a_class():
    with pytest.raises(DataError, match="without training images"):
        stratified_split(torch.tensor([0] * 9 + [1]), 9, 2, seed=0)


def test_stratified_split_follows_class_shares():
    labels = torch.tensor([0] * 70 + [1] * 30)
    fit, val = stratified_split(labels, 10, 2, seed=0)
    assert torch.bincount(labels[val], minlength=2).tolist() == [7, 3]
    assert sorted(np.concatenate([fit, val]).tolist()) == list(range(100))


def test_a_test_image_is_found_by_its_source_position_whatever_the_seed():
    from cifar_sweep.data.bundle import LabeledImages, build_bundle

    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=gen)
    data = LabeledImages.from_images(images, torch.arange(40) % 4)
    a, b = (build_bundle(data, data, ["a", "b", "c", "d"], val_size=8, subset=None, seed=s, source="t") for s in (0, 1))
    assert not torch.equal(a.test.source_index, b.test.source_index)  # the seeds shuffled the split apart
    wanted = [3, 17, 38]
    for bundle in (a, b):
        assert torch.equal(bundle.test.images[bundle.test.positions_of(wanted)], images[wanted])
    subset = build_bundle(data, data, ["a", "b", "c", "d"], val_size=4, subset=["a", "b"], seed=0, source="t")
    with pytest.raises(ValueError, match="not in this split"):
        subset.test.positions_of([2])  # class c: left out of the subset
