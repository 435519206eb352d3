"""The Keras-tutorial per-layer table: operation, output shape, weights, share of weights.

torchinfo computes it (shapes from a real forward pass, so it cannot drift from the model).
"""

from __future__ import annotations

from torch import nn


def model_summary(model: nn.Module, input_shape: tuple[int, ...] = (1, 3, 32, 32), device: str = "cpu") -> str:
    from torchinfo import summary  # imported here: only the start of a run needs it

    # verbose=0 returns the table instead of printing it; the loop decides where it goes.
    stats = summary(
        model,
        input_size=input_shape,
        col_names=("output_size", "num_params", "params_percent"),
        depth=4,
        device=device,
        verbose=0,
        row_settings=("var_names",),
    )
    buffers = sum(b.numel() for b in model.buffers())
    return f"{stats}\nBuffers (e.g. batchnorm running statistics, not weights): {buffers:,}\n"
