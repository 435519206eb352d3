"""Batches straight from in-memory uint8 tensors: the training loop's replacement for DataLoader.

The whole split sits on the training device as uint8 (150 MB for CIFAR-10's 50,000 images), so a
batch is one index gather (which also crops and flips) plus one fused standardisation: no worker
processes, no per-image Python, no host-to-device copy per step.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from cifar_sweep.data.augment import Augment, alternate_flips, gather_window


class Standardize:
    """uint8 (N, C, H, W) -> float32 standardised with the training split's per-channel statistics."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device, channels_last: bool):
        self.scale = (1.0 / torch.tensor(std, dtype=torch.float32, device=device)).view(1, -1, 1, 1)
        self.shift = (-torch.tensor(mean, dtype=torch.float32, device=device)).view(1, -1, 1, 1) * self.scale
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        # One pass: addcmul reads the uint8 pixels and writes float32 in the wanted memory format
        # (converting the layout and the dtype first would cost two more passes over the batch).
        out = torch.empty(images.shape, dtype=torch.float32, device=images.device, memory_format=self.memory_format)
        return torch.addcmul(self.shift, images, self.scale, out=out)


class TrainBatches:
    """Reshuffled, augmented training batches; one pass per `iter()`.

    The last partial batch is dropped when it would be tiny: batch-statistics batchnorm (the
    ResNet exercise's) is noisy on a handful of images, and a full pass still sees every image
    in the long run because the order is reshuffled each epoch.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        standardize: Standardize,
        augment: Augment,
        generator: torch.Generator,
        min_last_batch: int = 2,
        limit_batches: int | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"trainer.batch_size={batch_size} must be >= 1")
        self.images, self.labels = images, labels
        self.batch_size = batch_size
        self.standardize, self.augment, self.generator = standardize, augment, generator
        n = len(labels)
        full, rest = divmod(n, batch_size)
        self.keep_last = rest >= min(min_last_batch, batch_size) and rest > 0
        self.num_batches = full + int(self.keep_last)
        if limit_batches is not None:  # the VGG report trained only 2,000 mini-batches per epoch
            self.num_batches = min(self.num_batches, int(limit_batches))
        if self.num_batches == 0:
            raise ValueError(f"trainer.batch_size={batch_size} is larger than the {n} training images")
        self._pixels_cache: torch.Tensor | None = None
        self.epoch = 0  # set by the loop before each pass (set_epoch); only the alternating flip reads it
        # One coin per image, drawn once: the first epoch's flips of the alternating flip. A resumed
        # run rebuilds this object from the same seed before restoring the generator, so it draws
        # the same coins.
        self._first_flips = (torch.randint(0, 2, (n,), generator=generator, device=generator.device).bool()
                             if augment.alternate else None)

    def __len__(self) -> int:
        return self.num_batches

    @property
    def num_images(self) -> int:
        return min(len(self.labels), self.num_batches * self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """The epoch of the next pass (as DistributedSampler.set_epoch): the alternating flip's parity."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self.labels), generator=self.generator, device=self.generator.device)
        order = order.to(self.images.device)
        for i in range(self.num_batches):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield self._batch(idx), self.labels[idx]

    def _batch(self, idx: torch.Tensor) -> torch.Tensor:
        """Select, crop and flip in one gather of uint8 pixels, then standardise in one pass.

        Equal, value for value and draw for draw, to standardising `images[idx]` and then calling
        `augment` on it (tests/test_augment.py checks this): only the number of passes differs.
        """
        augment = self.augment
        if not augment.moves_pixels:
            x = self.standardize(self._pixels[idx].permute(0, 3, 1, 2))
            return augment.finish(x, None, self.generator, inplace=True) if augment.active else x
        _, _, h, w = self.images.shape
        flips = None
        if self._first_flips is not None:
            flips = alternate_flips(self._first_flips[idx.to(self._first_flips.device)], self.epoch)
        window = augment.window(len(idx), h, w, self.generator, self.images.device, flips)
        x = self.standardize(gather_window(self._channels_last, window, idx))
        return augment.finish(x, window, self.generator, inplace=True)

    @property
    def _pixels(self) -> torch.Tensor:
        """The split as (N, H, W, C): every image a contiguous run of whole pixels (made once)."""
        if self._pixels_cache is None:
            self._pixels_cache = self.images.permute(0, 2, 3, 1).contiguous()
        return self._pixels_cache

    @property
    def _channels_last(self) -> torch.Tensor:
        return self._pixels.permute(0, 3, 1, 2)  # the same memory seen as channels-last (N, C, H, W)


def eval_batches(
    images: torch.Tensor, labels: torch.Tensor, batch_size: int, standardize: Standardize
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed-order evaluation batches (the split's stored order is already shuffled once)."""
    for start in range(0, len(labels), batch_size):
        yield standardize(images[start:start + batch_size]), labels[start:start + batch_size]
