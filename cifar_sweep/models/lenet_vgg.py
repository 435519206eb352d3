"""LeNet and the VGG-16 variant of the TensorBoard report (models.md, section 5).

The report compared the training speed and accuracy of a tiny and a large plain conv net;
both are built exactly as printed there, without batchnorm, which is why the VGG barely
learned at lr 1e-4 in the report.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .layers import Classifier, flat_dim, mlp_layers

IMAGE_SIZE = 32


class LeNet(Classifier):
    """[conv 5x5 valid, relu, max pool 2] x 2 -> 120 -> 84 -> classes (62,006 params).

    The PyTorch-tutorial LeNet for colour images: 32 -> 28 -> 14 -> 10 -> 5, so the first
    dense layer sees 16 * 5 * 5 = 400 values.
    """

    def __init__(self, num_classes: int = 10, widths: Sequence[int] = (6, 16),
                 hidden: Sequence[int] = (120, 84), kernel_size: int = 5) -> None:
        layers: list[nn.Module] = []
        in_ch, size = 3, IMAGE_SIZE
        for width in (int(w) for w in widths):
            layers += [nn.Conv2d(in_ch, width, kernel_size), nn.ReLU(), nn.MaxPool2d(2)]
            in_ch, size = width, (size - kernel_size + 1) // 2
        hidden = [int(h) for h in hidden]
        neck = nn.Sequential(*mlp_layers(flat_dim(in_ch, size), hidden, "relu"))
        super().__init__(nn.Sequential(*layers), neck, nn.Linear(hidden[-1], num_classes))


def _vgg_stage(in_ch: int, width: int, depth: int, pointwise_last: bool) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i in range(depth):
        # VGG's configuration "C": the third conv of the deep stages is 1x1, adding depth
        # and non-linearity without widening the receptive field.
        k = 1 if pointwise_last and depth >= 3 and i == depth - 1 else 3
        layers += [nn.Conv2d(in_ch, width, k, padding=k // 2), nn.ReLU()]
        in_ch = width
    return layers + [nn.MaxPool2d(2)]


class VGG16Seed(Classifier):
    """The report's VGG-16: stages 64x2, 128x2, 256x3, 512x3, 512x3, each ending in a pool.

    All convs have biases and relu, no batchnorm; the deep stages end with a 1x1 conv.
    Five pools bring 32x32 to 1x1, so the classifier is 512 -> 256 -> 256 -> classes
    (10,195,786 params) instead of the ImageNet VGG's 4096-wide layers.
    """

    def __init__(self, num_classes: int = 10, widths: Sequence[int] = (64, 128, 256, 512, 512),
                 depths: Sequence[int] = (2, 2, 3, 3, 3), pointwise_last: bool = True,
                 hidden: Sequence[int] = (256, 256)) -> None:
        if len(widths) != len(depths):
            raise ValueError(f"widths {list(widths)} and depths {list(depths)} differ in length")
        layers: list[nn.Module] = []
        in_ch = 3
        for width, depth in zip((int(w) for w in widths), (int(d) for d in depths)):
            layers += _vgg_stage(in_ch, width, depth, pointwise_last)
            in_ch = width
        hidden = [int(h) for h in hidden]
        neck = nn.Sequential(*mlp_layers(flat_dim(in_ch, IMAGE_SIZE >> len(widths)), hidden, "relu"))
        super().__init__(nn.Sequential(*layers), neck, nn.Linear(hidden[-1], num_classes))
