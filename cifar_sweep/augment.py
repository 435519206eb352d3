"""Augmentation on whole batches of tensors, on the device where the batch lives.

The tutorial pipeline (PIL image -> per-image transforms -> DataLoader workers) spends more time
outside the network than inside it on a small CPU. Here one random draw per batch and a few
vectorised tensor ops replace per-image Python, and a seeded `torch.Generator` makes every draw
reproducible (and checkpointable).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

PAD_MODES = ("reflect", "zeros")


@dataclass(frozen=True)
class Augment:
    crop_padding: int = 0   # random translation by up to this many pixels (pad, then crop 32x32)
    pad_mode: str = "reflect"
    flip: bool = False      # horizontal flip with probability 1/2
    cutout: int = 0         # side of one square zeroed at a random centre (0 = off)

    def __post_init__(self):
        if self.crop_padding < 0 or self.cutout < 0:
            raise ValueError("data.augment.crop_padding and data.augment.cutout must be >= 0")
        if self.pad_mode not in PAD_MODES:
            raise ValueError(f"data.augment.pad_mode={self.pad_mode!r} must be one of {PAD_MODES}")

    @property
    def active(self) -> bool:
        return bool(self.crop_padding or self.flip or self.cutout)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment a float batch (N, C, H, W) that is already standardised (so 0 = the mean colour)."""
        if self.crop_padding:
            x = random_crop(x, self.crop_padding, self.pad_mode, generator)
        if self.flip:
            x = random_flip(x, generator)
        if self.cutout:
            x = cutout(x, self.cutout, generator)
        return x


def _uniform_ints(high: int, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.randint(0, high, (n,), generator=generator, device=generator.device).to(device)


def random_crop(x: torch.Tensor, padding: int, pad_mode: str, generator: torch.Generator) -> torch.Tensor:
    """Pad every image by `padding`, then take a 32x32 window at a random offset per image.

    One gather with broadcast row/column indices instead of a loop over images.
    """
    n, c, h, w = x.shape
    mode = "reflect" if pad_mode == "reflect" else "constant"
    padded = F.pad(x, (padding,) * 4, mode=mode)
    dy = _uniform_ints(2 * padding + 1, n, generator, x.device)
    dx = _uniform_ints(2 * padding + 1, n, generator, x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols].contiguous(memory_format=_format_of(x))


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    mask = _uniform_ints(2, x.shape[0], generator, x.device).bool()[:, None, None, None]
    return torch.where(mask, x.flip(3), x)


def cutout(x: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Zero one size x size square per image (DeVries & Taylor); centres may sit near the edge."""
    n, _, h, w = x.shape
    cy = _uniform_ints(h, n, generator, x.device)[:, None, None]
    cx = _uniform_ints(w, n, generator, x.device)[:, None, None]
    ys = torch.arange(h, device=x.device)[None, :, None]
    xs = torch.arange(w, device=x.device)[None, None, :]
    half = size // 2
    inside = (ys >= cy - half) & (ys < cy - half + size) & (xs >= cx - half) & (xs < cx - half + size)
    return x.masked_fill(inside[:, None], 0.0)


def _format_of(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() else torch.contiguous_format
