"""The TensorFlow class project's convnet (models.md, section 2).

One wide 4x4 conv, an 8x8 stride-1 max pool that keeps 32x32, then a huge dense layer:
18,432 -> 384 holds 99.9% of the 7,083,004 weights, which is why the write-up's
GPU-vs-CPU timing of the conv layer mattered so little next to the dense part.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import Classifier, TFSameMaxPool2d, flat_dim, mlp_layers, tf_same_padding

IMAGE_SIZE = 32


class TFConvNet(Classifier):
    """conv 4x4 "same" -> relu -> max pool 8x8/1 "same" -> dropout -> dense 384 -> dropout -> classes.

    "same" is TensorFlow's: for the even 4x4 kernel and 8x8 window the extra padding
    pixel goes after the image. The conv's padding is an explicit layer (PyTorch's
    ``padding="same"`` pads alike but warns about the hidden copy it makes).
    ``dropout=0.7`` is TF's keep_prob 0.3. All weights are drawn from N(0, init_std) with
    ``init_std=0.1``: a reader asked why, and with 1.0 the net did not learn. The write-up
    does not say how biases started; they start at zero here.
    """

    def __init__(self, num_classes: int = 10, width: int = 18, kernel_size: int = 4,
                 pool_size: int = 8, dense: int = 384, dropout: float = 0.7,
                 init_std: float = 0.1) -> None:
        before, after = tf_same_padding(kernel_size)
        trunk = nn.Sequential(
            nn.ZeroPad2d((before, after, before, after)),
            nn.Conv2d(3, width, kernel_size), nn.ReLU(),
            TFSameMaxPool2d(pool_size),
        )
        neck = nn.Sequential(nn.Dropout(dropout),
                             *mlp_layers(flat_dim(width, IMAGE_SIZE), [dense], "relu", dropout))
        super().__init__(trunk, neck, nn.Linear(dense, num_classes))
        self._init_normal(init_std)

    @torch.no_grad()
    def _init_normal(self, std: float) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(module.weight, 0.0, std)
                nn.init.zeros_(module.bias)
