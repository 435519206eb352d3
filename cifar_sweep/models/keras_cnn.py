"""The Keras example CIFAR-10 CNN, with the RMSprop write-up's batchnorm option (models.md, 4).

The tutorial of section 1 names this network as the next one to try; the RMSprop write-up
(78.08% in 5 epochs) used the same layer kinds plus batch normalisation but gave no widths,
so widths, dense size and dropout are knobs and its preset chooses them.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .layers import Classifier, flat_dim, mlp_layers

IMAGE_SIZE = 32


def _conv(in_ch: int, out_ch: int, padding: int, batchnorm: bool) -> list[nn.Module]:
    # Batchnorm after the activation: the write-up lists "conv, relu, batch normalisation",
    # the usual Keras idiom of Conv2D(activation="relu") followed by BatchNormalization().
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, 3, padding=padding), nn.ReLU()]
    if batchnorm:
        layers.append(nn.BatchNorm2d(out_ch))
    return layers


class KerasCNN(Classifier):
    """Blocks of [conv 3x3 same, relu, conv 3x3 valid, relu, max pool 2, dropout] -> dense -> classes.

    With the Keras example's widths (32, 64), dense 512 and no batchnorm: 1,250,858 params.
    The unpadded second conv of each block shrinks the map (32 -> 30 -> 15 -> 13 -> 6), so the
    trunk takes any image of at least 10x10 and the dense layer sees 6 * 6 * 64 = 2304 values.
    """

    def __init__(self, num_classes: int = 10, widths: Sequence[int] = (32, 64), dense: int = 512,
                 dropout_conv: float = 0.25, dropout_dense: float = 0.5,
                 batchnorm: bool = False) -> None:
        layers: list[nn.Module] = []
        in_ch, size = 3, IMAGE_SIZE
        for width in (int(w) for w in widths):
            layers += _conv(in_ch, width, 1, batchnorm) + _conv(width, width, 0, batchnorm)
            layers += [nn.MaxPool2d(2), nn.Dropout(dropout_conv)]
            in_ch, size = width, (size - 2) // 2
        neck = nn.Sequential(*mlp_layers(flat_dim(in_ch, size), [dense], "relu", dropout_dense))
        super().__init__(nn.Sequential(*layers), neck, nn.Linear(int(dense), num_classes))
