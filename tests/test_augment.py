"""Batched augmentation keeps shape and dtype, really changes images, and is reproducible."""

import pytest
import torch

from cifar_sweep.augment import Augment, cutout, random_crop, random_flip


@pytest.fixture
def batch():
    return torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("aug", [Augment(crop_padding=4), Augment(flip=True), Augment(cutout=8),
                                 Augment(crop_padding=2, pad_mode="zeros", flip=True, cutout=12)])
def test_shape_dtype_and_reproducible(batch, aug):
    a = aug(batch, torch.Generator().manual_seed(0))
    b = aug(batch, torch.Generator().manual_seed(0))
    c = aug(batch, torch.Generator().manual_seed(1))
    assert a.shape == batch.shape and a.dtype == batch.dtype
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_crop_is_a_translation(batch):
    out = random_crop(batch, 2, "zeros", torch.Generator().manual_seed(3))
    padded = torch.nn.functional.pad(batch, (2, 2, 2, 2))
    for i in range(len(batch)):  # every output is some 32x32 window of the padded input
        windows = [padded[i, :, y:y + 32, x:x + 32] for y in range(5) for x in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)


def test_flip_flips_about_half(batch):
    out = random_flip(batch, torch.Generator().manual_seed(0))
    flipped = sum(torch.equal(out[i], batch[i].flip(2)) for i in range(len(batch)))
    kept = sum(torch.equal(out[i], batch[i]) for i in range(len(batch)))
    assert flipped + kept == len(batch) and 0 < flipped < len(batch)


def test_cutout_zeroes_at_most_a_square(batch):
    out = cutout(batch, 8, torch.Generator().manual_seed(0))
    zeroed = (out == 0).all(1).flatten(1).sum(1)
    assert (zeroed <= 64).all() and (zeroed > 0).all()


def test_channels_last_kept():
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    out = Augment(crop_padding=4)(x, torch.Generator().manual_seed(0))
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_bad_values_named():
    with pytest.raises(ValueError, match="pad_mode"):
        Augment(pad_mode="wrap")
    with pytest.raises(ValueError, match="crop_padding"):
        Augment(crop_padding=-1)
