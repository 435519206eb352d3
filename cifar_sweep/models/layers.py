"""Building blocks shared by the model zoo.

Every network of ``shared/spec/models.md`` is a :class:`Classifier`: a convolutional
``trunk`` (images -> feature maps; any image size the architecture allows), a ``neck``
(flatten or global pool, plus hidden dense layers) and a ``head`` (the last linear layer).
Keeping the three apart gives the rest of the project two stable hooks without knowing
the family: ``features()`` for the embedding projection and ``trunk`` for feature maps
of arbitrarily large photos (the Keras RMSprop write-up showed maps of a 900x900 image).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "Classifier",
    "PoolFirstSequential",
    "TFSameMaxPool2d",
    "activation",
    "count_params",
    "flat_dim",
    "mlp_layers",
    "tf_same_padding",
    "uniform_fan_in_",
]


class Classifier(nn.Module):
    """trunk -> neck -> head, with an optional constant output scale.

    ``forward(x) == head(features(x)) * output_scale``. Several fast CIFAR nets
    (ResNet-9 of DAWNBench, airbench) shrink the logits by a constant instead of
    tuning the last layer's init or the learning rate; keeping that scale out of
    ``features`` leaves the embedding untouched by it.
    """

    def __init__(self, trunk: nn.Module, neck: nn.Module, head: nn.Module,
                 output_scale: float = 1.0) -> None:
        super().__init__()
        self.trunk = trunk
        self.neck = neck
        self.head = head
        self.output_scale = float(output_scale)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate-layer activations, shape (N, D)."""
        return self.neck(self.trunk(x))

    def forward(self, x: Tensor) -> Tensor:
        logits = self.head(self.features(x))
        if self.output_scale != 1.0:
            logits = logits * self.output_scale
        return logits

    def init_from_data(self, images: Tensor) -> None:
        """A data-dependent initialisation from standardised training images; most nets need none."""

    def on_epoch_start(self, epoch: int) -> None:
        """Changes a network makes to itself as training goes on; most nets make none."""

    def extra_repr(self) -> str:
        return f"output_scale={self.output_scale:g}" if self.output_scale != 1.0 else ""


class PoolFirstSequential(nn.Sequential):
    """``nn.Sequential`` that runs each ``ReLU, MaxPool2d`` pair as ``MaxPool2d, ReLU``.

    The ReLU is monotone, so the max of the rectified window is the rectified max: outputs and
    gradients are the same, bit for bit (the gradient reaches the same argmax, or nothing when
    the max is <= 0). Pooling first sends 4x fewer elements through the ReLU and its backward,
    which matters in nets as small as ``cnn_simple``. A pair whose modules carry hooks (model
    summaries, feature-map views) runs in the listed order, so what they observe is unchanged.
    """

    def forward(self, x: Tensor) -> Tensor:
        modules = list(self)
        i = 0
        while i < len(modules):
            module = modules[i]
            pool = modules[i + 1] if i + 1 < len(modules) else None
            if (type(module) is nn.ReLU and type(pool) is nn.MaxPool2d and not module.inplace
                    and not _hooked(module) and not _hooked(pool)):
                x = module(pool(x))
                i += 2
            else:
                x = module(x)
                i += 1
        return x


def _hooked(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks)


_ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "gelu": nn.GELU}


def activation(name: str) -> nn.Module:
    """A fresh activation module by name; unknown names fail with the valid choices."""
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(_ACTIVATIONS)}") from None


def mlp_layers(in_features: int, hidden: Sequence[int], act: str = "relu",
               dropout: float = 0.0) -> list[nn.Module]:
    """Flatten, then [linear, activation, (dropout)] per hidden width."""
    layers: list[nn.Module] = [nn.Flatten(1)]
    for width in hidden:
        layers += [nn.Linear(in_features, int(width)), activation(act)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        in_features = int(width)
    return layers


def flat_dim(channels: int, size: int) -> int:
    """Length of a flattened (channels, size, size) map."""
    if size < 1:
        raise ValueError("the input image is too small for this network: a feature map shrank to nothing")
    return channels * size * size


def tf_same_padding(kernel_size: int, stride: int = 1) -> tuple[int, int]:
    """(before, after) padding of TensorFlow's "same" for a stride-1 window.

    TF puts the odd extra pixel of an even window after the image (bottom/right),
    so a 4x4 conv pads 1 before and 2 after; PyTorch's symmetric ``padding=k//2``
    would grow the map by one instead of keeping it.
    """
    if stride != 1:
        raise ValueError("only stride 1 is needed by the zoo")
    total = kernel_size - 1
    return total // 2, total - total // 2


class TFSameMaxPool2d(nn.Module):
    """Max pool with TensorFlow "same" padding (stride 1 keeps the size).

    TF ignores padded cells when taking the max, which padding with -inf
    reproduces; zero padding would only agree on non-negative inputs.

    A k x k max is a 1 x k max followed by a k x 1 one (same values, same winning
    cells), and the two passes cost 2k comparisons per output instead of k^2: for
    the 8x8 window of tf_convnet, a quarter of the training step's time instead of
    more than half of it on the CPU.
    """

    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        before, after = tf_same_padding(kernel_size)
        self.pad = (before, after, before, after)
        self.rows = nn.MaxPool2d((1, kernel_size), stride=1)
        self.cols = nn.MaxPool2d((kernel_size, 1), stride=1)

    def forward(self, x: Tensor) -> Tensor:
        x = nn.functional.pad(x, self.pad, value=float("-inf"))
        return self.cols(self.rows(x))


def count_params(model: nn.Module, trainable: bool = True) -> int:
    """Trainable parameters, counted the way models.md does (trainable=False: the frozen ones)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad == trainable)


@torch.no_grad()
def uniform_fan_in_(module: nn.Module) -> None:
    """Uniform(-s, s), s = sqrt(1 / fan_in), on a conv or linear weight (biases zeroed)."""
    weight = module.weight
    fan_in = weight[0].numel()
    bound = (1.0 / fan_in) ** 0.5
    weight.uniform_(-bound, bound)
    if getattr(module, "bias", None) is not None:
        module.bias.zero_()
