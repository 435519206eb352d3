"""Augmentation on whole batches of tensors, on the device where the batch lives.

The tutorial pipeline (PIL image -> per-image transforms -> DataLoader workers) spends more time
outside the network than inside it on a small CPU. Here one random draw per batch and a few
vectorised tensor ops replace per-image Python, and a seeded `torch.Generator` makes every draw
reproducible (and checkpointable).

Crop and flip only move pixels, so both become one index plan (`Window`: a source row per output
row and a source column per output column of every image) applied by a single gather; the training
loop applies it to the uint8 images straight from the dataset (`TrainBatches`), fusing batch
selection, crop and flip into one pass before standardisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cifar_sweep.data.options import PAD_MODES


@dataclass(frozen=True)
class Window:
    """Where each output pixel of a crop/flip comes from: rows (N, H) and cols (N, W), in range.

    `outside` (N, H, W), for zero padding only, marks output pixels that fell in the padding: the
    caller sets them to 0 after standardisation (0 = the mean colour), as padding a standardised
    batch with zeros would.
    """

    rows: torch.Tensor
    cols: torch.Tensor
    outside: torch.Tensor | None = None


@dataclass(frozen=True)
class Augment:
    crop_padding: int = 0   # random translation by up to this many pixels (pad, then crop 32x32)
    pad_mode: str = "reflect"
    flip: bool | str = False  # horizontal flip with probability 1/2; "alternate": see alternate_flips
    cutout: int = 0         # side of one square zeroed at a random centre (0 = off)

    def __post_init__(self):
        if self.crop_padding < 0 or self.cutout < 0:
            raise ValueError("data.augment.crop_padding and data.augment.cutout must be >= 0")
        if self.pad_mode not in PAD_MODES:
            raise ValueError(f"data.augment.pad_mode={self.pad_mode!r} must be one of {PAD_MODES}")
        if self.flip not in (True, False, "alternate"):
            raise ValueError(f"data.augment.flip={self.flip!r} must be true, false or alternate")

    @property
    def alternate(self) -> bool:
        return self.flip == "alternate"

    @property
    def active(self) -> bool:
        return bool(self.crop_padding or self.flip or self.cutout)

    @property
    def moves_pixels(self) -> bool:
        """Crop or flip: the part that `window` plans and one gather applies."""
        return bool(self.crop_padding or self.flip)

    def window(self, n: int, h: int, w: int, generator: torch.Generator, device: torch.device,
               flips: torch.Tensor | None = None) -> Window:
        """Draw this batch's crop offsets, then its flips (the order every path uses).

        `flips` (bool, one per image) decides the flips instead of coins: the alternating flip.
        """
        return sample_window(n, h, w, self.crop_padding, self.pad_mode, bool(self.flip), generator, device, flips)

    def finish(self, x: torch.Tensor, window: Window | None, generator: torch.Generator,
               inplace: bool = False) -> torch.Tensor:
        """After the gather of `window` (if any): zero the padding, then cutout. Float batches only.

        `inplace` (for a batch the caller made and owns) also keeps its memory format.
        """
        if window is not None and window.outside is not None:
            x = x.masked_fill_(window.outside[:, None], 0.0) if inplace else x.masked_fill(window.outside[:, None], 0.0)
            inplace = True
        if self.cutout:
            x = cutout(x, self.cutout, generator, inplace=inplace)
        return x

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment a float batch (N, C, H, W) that is already standardised (so 0 = the mean colour).

        A lone batch has no epoch and no dataset positions, so flip="alternate" is a random flip here;
        TrainBatches applies the real alternating flip.
        """
        if not self.moves_pixels:
            return self.finish(x, None, generator)
        n, _, h, w = x.shape
        window = self.window(n, h, w, generator, x.device)
        return self.finish(gather_window(x, window), window, generator, inplace=True)


def _uniform_ints(high: int, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.randint(0, high, (n,), generator=generator, device=generator.device).to(device)


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Mirror indices in [-size+1, 2*size-2] into [0, size-1] without repeating the edge (F.pad's
    "reflect": -1 -> 1, size -> size-2)."""
    last = size - 1
    return last - (last - index.abs()).abs()


def alternate_flips(first_epoch: torch.Tensor, epoch: int) -> torch.Tensor:
    """Keller Jordan's alternating flip (airbench): each image is flipped by a fair coin in the first
    epoch and the other way round in every later epoch than the one before.

    Random flips show an image the same way two epochs running half the time; alternating shows both
    views every two epochs, which the airbench paper found worth a sizeable share of epochs.
    `first_epoch` holds each image's coin (drawn once per run).
    """
    return first_epoch ^ bool(epoch % 2)


def sample_window(n: int, h: int, w: int, padding: int, pad_mode: str, flip: bool,
                  generator: torch.Generator, device: torch.device, flips: torch.Tensor | None = None) -> Window:
    """Random translation by up to `padding` pixels (then an optional flip) as source indices.

    Draws, in order: row offsets, column offsets (if padding), flip coins (if flip and no `flips`
    given): the same draws as padding then cropping then flipping the batch, so the same images
    come out.
    """
    if padding and padding >= min(h, w) and pad_mode == "reflect":
        raise ValueError(f"data.augment.crop_padding={padding} must be below the image size {min(h, w)} for reflect")
    rows = torch.arange(h, device=device).expand(n, h)
    cols = torch.arange(w, device=device).expand(n, w)
    if padding:
        dy = _uniform_ints(2 * padding + 1, n, generator, device)
        dx = _uniform_ints(2 * padding + 1, n, generator, device)
        rows = rows + (dy - padding)[:, None]
        cols = cols + (dx - padding)[:, None]
    if flip:
        flipped = (_uniform_ints(2, n, generator, device).bool() if flips is None else flips.to(device))[:, None]
        cols = torch.where(flipped, cols.flip(1), cols)
    outside = None
    if padding and pad_mode == "reflect":
        rows, cols = _reflect(rows, h), _reflect(cols, w)
    elif padding:
        outside = ((rows < 0) | (rows >= h))[:, :, None] | ((cols < 0) | (cols >= w))[:, None, :]
        rows, cols = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
    return Window(rows, cols, outside)


def gather_window(images: torch.Tensor, window: Window, index: torch.Tensor | None = None) -> torch.Tensor:
    """out[i, :, y, x] = images[index[i], :, rows[i, y], cols[i, x]] in one gather, any dtype.

    `index` picks the batch's images from a larger tensor (the whole training split): selecting,
    cropping and flipping then cost one pass over the batch. A channels-last source gives a
    channels-last result (whole pixels are copied as rows), a contiguous one a contiguous result.
    """
    n_src, c, h, w = images.shape
    rows, cols = window.rows, window.cols
    n, oh, ow = rows.shape[0], rows.shape[1], cols.shape[1]
    base = (torch.arange(n, device=rows.device) if index is None else index.to(rows.device)) * (h * w)
    pixel = base[:, None, None] + rows[:, :, None] * w + cols[:, None, :]  # (n, oh, ow)
    if images.dim() == 4 and images.is_contiguous(memory_format=torch.channels_last) and c > 1:
        table = images.permute(0, 2, 3, 1).reshape(n_src * h * w, c)  # a view: one row per pixel
        out = table.index_select(0, pixel.reshape(-1))
        return out.view(n, oh, ow, c).permute(0, 3, 1, 2)
    planes = images.contiguous().view(n_src, c, h * w)
    flat = (pixel - base[:, None, None]).view(n, 1, oh * ow).expand(n, c, oh * ow)
    source = planes if index is None else planes.index_select(0, index.to(planes.device))
    return source.gather(2, flat).view(n, c, oh, ow)


def random_crop(x: torch.Tensor, padding: int, pad_mode: str, generator: torch.Generator) -> torch.Tensor:
    """Pad every image by `padding`, then take a 32x32 window at a random offset per image."""
    n, _, h, w = x.shape
    window = sample_window(n, h, w, padding, pad_mode, False, generator, x.device)
    out = gather_window(x, window)
    return out if window.outside is None else out.masked_fill_(window.outside[:, None], 0.0)


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    mask = _uniform_ints(2, x.shape[0], generator, x.device).bool()[:, None, None, None]
    return torch.where(mask, x.flip(3), x)


def cutout(x: torch.Tensor, size: int, generator: torch.Generator, inplace: bool = False) -> torch.Tensor:
    """Zero one size x size square per image (DeVries & Taylor); centres may sit near the edge."""
    n, _, h, w = x.shape
    cy = _uniform_ints(h, n, generator, x.device)[:, None, None]
    cx = _uniform_ints(w, n, generator, x.device)[:, None, None]
    ys = torch.arange(h, device=x.device)[None, :, None]
    xs = torch.arange(w, device=x.device)[None, None, :]
    half = size // 2
    inside = (ys >= cy - half) & (ys < cy - half + size) & (xs >= cx - half) & (xs < cx - half + size)
    return x.masked_fill_(inside[:, None], 0.0) if inplace else x.masked_fill(inside[:, None], 0.0)
