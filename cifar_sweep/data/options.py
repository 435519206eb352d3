"""A data option's config block split into what its loader takes and what the training loop takes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

TRAINING_KEYS = ("augment",)  # read by the training loop, not passed to the loader

# The values data.augment takes (here, torch-free, so the config check can name them before torch loads).
PAD_MODES = ("reflect", "zeros")
FLIPS = (True, False, "alternate")  # alternate: airbench's flip of every other epoch


def loader_kwargs(data: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of the loader named by `data._target_` (that key included)."""
    return {k: v for k, v in data.items() if k not in TRAINING_KEYS}
