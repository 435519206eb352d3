"""Residual networks: the ResNet exercise's seed net, ResNet-18 and the DAWNBench ResNet-9.

``resnet_seed`` is the simplified ResNet of the exercise (models.md, section 3);
``resnet18`` and ``resnet9`` are the modern references of section 6.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .layers import Classifier, uniform_fan_in_

__all__ = ["ResNetSeed", "ResNet18", "ResNet9"]

# ---------------------------------------------------------------- resnet_seed


def _seed_bn(channels: int) -> nn.BatchNorm2d:
    # The exercise's batchnorm: the batch's own statistics in training and evaluation
    # alike, nothing learned, nothing remembered (so eval batches must be mixed).
    return nn.BatchNorm2d(channels, affine=False, track_running_stats=False)


class SeedBlock(nn.Module):
    """``relu(bn(conv3x3(x))) + shortcut(x)``: identity, or a 1x1 conv when widths change.

    The shortcut is added after the relu and is not normalised, as the exercise specifies.
    """

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False)
        self.bn = _seed_bn(out_ch)
        self.relu = nn.ReLU()
        self.shortcut = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x))) + self.shortcut(x)


class ResNetSeed(Classifier):
    """The exercise's ResNet: stem 16, stages 32/64/128 (projection + identity block each).

    Max pools between stages, a global max pool, the features scaled by alpha = 0.125 and
    a bias-free linear layer: 301,744 params for 2 classes, 302,768 for 10. With no bias,
    scaling the features or the logits is the same; it is applied to the logits here so
    ``features`` stays the plain pooled activations. Weights start Uniform(-s, s) with
    s = sqrt(1 / fan_in), the exercise's init (PyTorch's default would differ).
    """

    def __init__(self, num_classes: int = 10, widths: Sequence[int] = (16, 32, 64, 128),
                 alpha: float = 0.125) -> None:
        stem_w, *stage_ws = (int(w) for w in widths)
        layers: list[nn.Module] = [nn.Sequential(
            nn.Conv2d(3, stem_w, 3, padding=1, bias=False), _seed_bn(stem_w), nn.ReLU())]
        in_ch = stem_w
        for i, width in enumerate(stage_ws):
            if i > 0:
                layers.append(nn.MaxPool2d(2))
            layers += [SeedBlock(in_ch, width), SeedBlock(width, width)]
            in_ch = width
        neck = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(1))
        super().__init__(nn.Sequential(*layers), neck, nn.Linear(in_ch, num_classes, bias=False),
                         output_scale=alpha)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                uniform_fan_in_(module)


# ---------------------------------------------------------------- resnet18


class BasicBlock(nn.Module):
    """He et al.'s two-conv residual block; a 1x1 conv + bn shortcut where the shape changes."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_ch))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet18(Classifier):
    """The usual CIFAR ResNet-18 (11,173,962 params).

    Compared with the ImageNet model, the stem is one 3x3 conv with no max pool: on 32x32
    images the 7x7/2 conv and pool would throw away three quarters of the pixels at once.
    Global average pooling (rather than a fixed 4x4 pool) lets the trunk take any size.
    """

    def __init__(self, num_classes: int = 10, width: int = 64,
                 blocks: Sequence[int] = (2, 2, 2, 2)) -> None:
        layers: list[nn.Module] = [nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())]
        in_ch = width
        for i, n in enumerate(int(b) for b in blocks):
            out_ch = width * 2**i
            stage = [BasicBlock(in_ch if j == 0 else out_ch, out_ch, 2 if i > 0 and j == 0 else 1)
                     for j in range(n)]
            layers.append(nn.Sequential(*stage))
            in_ch = out_ch
        neck = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        super().__init__(nn.Sequential(*layers), neck, nn.Linear(in_ch, num_classes))


# ---------------------------------------------------------------- resnet9


def _conv_bn(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_ch), nn.ReLU())


class Residual(nn.Module):
    """``x + f(x)``: ResNet-9's residual branch of two conv-bn-relu, no projection needed."""

    def __init__(self, branch: nn.Module) -> None:
        super().__init__()
        self.branch = branch

    def forward(self, x: Tensor) -> Tensor:
        return x + self.branch(x)


class ResNet9(Classifier):
    """The DAWNBench ResNet-9 of Myrtle.ai's "How to train your ResNet" (6,573,120 params).

    prep conv 64; layer1 conv 128 + pool + residual(2 x conv 128); layer2 conv 256 + pool;
    layer3 conv 512 + pool + residual(2 x conv 512); global max pool; linear without bias;
    logits x 0.125. Only three downsamplings and two residual branches keep it shallow and
    fast; the 0.125 output scale stands in for a smaller init of the last layer, which the
    write-up found to speed early training.
    """

    def __init__(self, num_classes: int = 10, widths: Sequence[int] = (64, 128, 256, 512),
                 residual: Sequence[bool] = (True, False, True), scale: float = 0.125) -> None:
        prep_w, *layer_ws = (int(w) for w in widths)
        if len(layer_ws) != len(residual):
            raise ValueError(f"need one residual flag per layer after prep, got {list(residual)}")
        layers: list[nn.Module] = [_conv_bn(3, prep_w)]
        in_ch = prep_w
        for width, res in zip(layer_ws, residual):
            stage: list[nn.Module] = [_conv_bn(in_ch, width), nn.MaxPool2d(2)]
            if res:
                stage.append(Residual(nn.Sequential(_conv_bn(width, width), _conv_bn(width, width))))
            layers.append(nn.Sequential(*stage))
            in_ch = width
        neck = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(1))
        super().__init__(nn.Sequential(*layers), neck, nn.Linear(in_ch, num_classes, bias=False),
                         output_scale=scale)

