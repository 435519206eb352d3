"""Batched augmentation keeps shape and dtype, really changes images, and is reproducible."""

import pytest
import torch

from cifar_sweep.data.augment import Augment, cutout, random_crop, random_flip


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


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("aug", [Augment(), Augment(flip=True), Augment(crop_padding=4, pad_mode="zeros", flip=True),
                                 Augment(crop_padding=2, flip=True), Augment(crop_padding=2, pad_mode="zeros", cutout=8)])
def test_fused_batches_equal_standardize_then_augment(aug, channels_last):
    """TrainBatches gathers, crops and flips uint8 pixels in one pass: same values, same draws."""
    from cifar_sweep.data.batches import Standardize, TrainBatches

    images = torch.randint(0, 256, (300, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    labels = torch.arange(300) % 10
    standardize = Standardize((120.0, 115.0, 100.0), (60.0, 61.0, 62.0), torch.device("cpu"), channels_last)
    fused = list(TrainBatches(images, labels, 64, standardize, aug, torch.Generator().manual_seed(7)))
    g = torch.Generator().manual_seed(7)
    order = torch.randperm(300, generator=g)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for i, (x, y) in enumerate(fused):
        idx = order[i * 64:(i + 1) * 64]
        reference = standardize(images[idx])
        if aug.active:
            reference = aug(reference, g)
        assert torch.equal(x, reference) and torch.equal(y, labels[idx])
        assert x.dtype == torch.float32 and x.is_contiguous(memory_format=fmt)


def test_reflect_crop_matches_padding_then_cropping(batch):
    out = random_crop(batch, 3, "reflect", torch.Generator().manual_seed(4))
    padded = torch.nn.functional.pad(batch, (3, 3, 3, 3), mode="reflect")
    for i in range(len(batch)):
        windows = [padded[i, :, y:y + 32, x:x + 32] for y in range(7) for x in range(7)]
        assert any(torch.equal(out[i], w) for w in windows)


def test_alternating_flip_shows_each_image_both_ways_every_two_epochs():
    """flip=alternate (airbench): a fair coin per image in epoch 0, then the other way each epoch."""
    from cifar_sweep.data.batches import Standardize, TrainBatches

    n = 200
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    images[:, :, :, 0] = 0  # a left edge that tells a flipped image from an unflipped one
    images[:, :, :, -1] = 255
    labels = torch.arange(n)  # the label says which image a row is
    standardize = Standardize((0.0,) * 3, (1.0,) * 3, torch.device("cpu"), channels_last=True)
    batches = TrainBatches(images, labels, 64, standardize, Augment(flip="alternate"), torch.Generator().manual_seed(7))

    def flipped_in(epoch: int) -> torch.Tensor:
        batches.set_epoch(epoch)
        state = torch.zeros(n, dtype=torch.bool)
        for x, y in batches:
            source = images[y].float()
            is_flipped = x[:, 0, 0, 0] == 255  # the bright column came to the left
            expected = torch.where(is_flipped[:, None, None, None], source.flip(3), source)
            assert torch.equal(x, expected)  # each image whole, mirrored or not, nothing else
            state[y] = is_flipped
        return state

    first, second, third = flipped_in(0), flipped_in(1), flipped_in(2)
    assert 0.35 < first.float().mean() < 0.65  # a fair coin per image
    assert torch.equal(second, ~first) and torch.equal(third, first)


def test_flip_value_is_checked():
    assert Augment(flip="alternate").alternate and not Augment(flip=True).alternate
    with pytest.raises(ValueError, match="flip"):
        Augment(flip="sometimes")
