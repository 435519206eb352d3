"""The four networks of the Keras hands-on tutorial (models.md, section 1).

The tutorial climbs from a linear model to a small VGG-like CNN and ranks the runs by
validation accuracy; the point of keeping all four is to show how much each step buys
(about 37% -> 45% -> 70% -> 83% validation accuracy in the write-up).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .layers import Classifier, PoolFirstSequential, flat_dim, mlp_layers

IMAGE_SIZE = 32
IN_CHANNELS = 3


class LogReg(Classifier):
    """Multinomial logistic regression on raw pixels: flatten 3072 -> linear.

    The tutorial's baseline (41% train / 37% val): what a model without any notion
    of space reaches. ``features`` are the flattened pixels themselves.
    """

    def __init__(self, num_classes: int = 10) -> None:
        in_features = flat_dim(IN_CHANNELS, IMAGE_SIZE)
        super().__init__(nn.Identity(), nn.Flatten(1), nn.Linear(in_features, num_classes))


class MLP(Classifier):
    """Fully connected net, sigmoid hidden layers of 128 (tutorial: about 45% val).

    Sigmoid, not ReLU, because the tutorial used it; ``activation`` lets a preset
    show what the modern choice changes.
    """

    def __init__(self, num_classes: int = 10, hidden: Sequence[int] = (128, 128),
                 activation: str = "sigmoid") -> None:
        hidden = [int(h) for h in hidden]
        neck = nn.Sequential(*mlp_layers(flat_dim(IN_CHANNELS, IMAGE_SIZE), hidden, activation))
        super().__init__(nn.Identity(), neck, nn.Linear(hidden[-1], num_classes))


class CNNSimple(Classifier):
    """Two [conv 3x3 valid, relu, max pool 2] blocks, then one linear layer.

    The tutorial's first CNN (about 70% val); "valid" convs shrink 32 -> 30 -> 15 -> 13 -> 6,
    so the linear layer sees 6 * 6 * 64 = 2304 features. The trunk pools before each ReLU
    (``PoolFirstSequential``: same values and gradients, a quarter of the ReLU work).
    """

    def __init__(self, num_classes: int = 10, widths: Sequence[int] = (32, 64)) -> None:
        layers: list[nn.Module] = []
        in_ch, size = IN_CHANNELS, IMAGE_SIZE
        for width in widths:
            layers += [nn.Conv2d(in_ch, int(width), 3), nn.ReLU(), nn.MaxPool2d(2)]
            in_ch, size = int(width), (size - 2) // 2
        super().__init__(PoolFirstSequential(*layers), nn.Flatten(1),
                         nn.Linear(flat_dim(in_ch, size), num_classes))


def _adv_block(in_ch: int, width: int, dropout: float) -> list[nn.Module]:
    # The tutorial's order: batchnorm after the pool (so it normalises 4x fewer
    # values), the 1x1 conv mixing channels at no spatial cost.
    return [
        nn.Conv2d(in_ch, width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, width, 1), nn.ReLU(),
        nn.MaxPool2d(2), nn.BatchNorm2d(width), nn.Dropout(dropout),
    ]


class CNNAdv(Classifier):
    """Three [conv 3x3 same, relu, conv 1x1, relu, pool, batchnorm, dropout] blocks + MLP head.

    The tutorial's best net (about 83% val after about 30 min). Its dropout rates are not
    in the write-up; models.md fixes 0.25 after conv blocks and 0.5 after the dense layer.
    642,538 trainable parameters (Keras printed 642,986, counting the 448 batchnorm
    running statistics that PyTorch keeps as buffers).
    """

    def __init__(self, num_classes: int = 10, widths: Sequence[int] = (32, 64, 128),
                 dense: int = 256, dropout_conv: float = 0.25, dropout_dense: float = 0.5) -> None:
        layers: list[nn.Module] = []
        in_ch, size = IN_CHANNELS, IMAGE_SIZE
        for width in widths:
            layers += _adv_block(in_ch, int(width), dropout_conv)
            in_ch, size = int(width), size // 2
        neck = nn.Sequential(*mlp_layers(flat_dim(in_ch, size), [dense], "relu", dropout_dense))
        super().__init__(nn.Sequential(*layers), neck, nn.Linear(int(dense), num_classes))
