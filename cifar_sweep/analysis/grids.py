"""Captioned image grids: tiles upscaled for a person's eye, a caption band under each, an optional legend.

One drawing for every grid the project makes (the per-epoch misclassified grid of a run, the
still-wrong grid across runs): a numpy canvas laid out as torchvision's `make_grid` would, Pillow the
captions, a few milliseconds per grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

Colour = tuple[int, int, int]
Line = tuple[str, Colour]
LINE_HEIGHT = 13  # an 11-pixel font and two pixels of air
WHITE = (255, 255, 255)


def font(size: int = 11) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def captioned_grid(
    images: torch.Tensor,
    captions: Sequence[Sequence[Line]],
    tile: int,
    caption: int,
    pad: int = 4,
    nrow: int = 8,
    legend: Sequence[tuple[int, str, Colour]] = (),
    legend_height: int = 0,
) -> Image.Image:
    """A grid of `images` (N, 3, h, w; uint8 or float in 0..255), each tile `tile` pixels square
    (nearest-neighbour, so pixels stay pixels) over a white band `caption` pixels high holding its
    lines of text. `legend` items (x, text, colour) are drawn in a band `legend_height` high on top.
    """
    # uint8 throughout and one numpy array: a few milliseconds per epoch's grid. (Float tiles went
    # through dozens of small multi-threaded copies, each a wait for a busy core on a loaded machine.)
    pixels = images.cpu()
    pixels = (pixels if pixels.dtype == torch.uint8 else pixels.clamp(0, 255).byte()).numpy()
    n, _, h, w = pixels.shape
    nrow = max(1, min(nrow, n))
    rows = -(-n // nrow)
    body_px = np.full((pad + rows * (tile + caption + pad), pad + nrow * (tile + pad), 3), 255, dtype=np.uint8)
    ys, xs = np.arange(tile) * h // tile, np.arange(tile) * w // tile  # nearest neighbour, as F.interpolate
    for k in range(n):
        row, col = divmod(k, nrow)
        y0, x0 = pad + row * (tile + caption + pad), pad + col * (tile + pad)
        body_px[y0:y0 + tile, x0:x0 + tile] = pixels[k].transpose(1, 2, 0)[ys][:, xs]
    body = Image.fromarray(body_px)
    if legend_height:
        canvas = Image.new("RGB", (body.width, body.height + legend_height), WHITE)
        canvas.paste(body, (0, legend_height))
    else:
        canvas = body
    draw, face = ImageDraw.Draw(canvas), font(11)
    for x, text, colour in legend:
        draw.text((x, 3), text, fill=colour, font=face)
    for k, lines in enumerate(captions):
        row, col = divmod(k, nrow)
        x = pad + col * (tile + pad) + 2
        y = legend_height + pad + row * (tile + caption + pad) + tile + 1
        for i, (text, colour) in enumerate(lines):
            draw.text((x, y + i * LINE_HEIGHT), text, fill=colour, font=face)
    return canvas
