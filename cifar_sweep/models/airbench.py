"""An airbench-style network: the CIFAR-10 speed-record family (models.md, section 6).

Written from Keller Jordan's write-up "94% on CIFAR-10 in 3.29 seconds on a single GPU"
(arXiv:2404.00498) and the public airbench94 description, not copied from it.

Architecture (airbench94 at its base width):

- whitening: conv 2x2, no padding, 3 -> 24 channels, with bias, then GELU. Its weights are
  set from the data (``init_from_data``) and frozen: the 12 eigenvectors of the 2x2-patch
  covariance, scaled by 1/sqrt(eigenvalue + eps), and their negatives (so the GELU after it
  keeps both signs of every whitened direction). Only the bias trains.
- three blocks of [conv 3x3 same, max pool 2, batchnorm, GELU, conv 3x3 same, batchnorm,
  GELU], widths 64, 256, 256. Convs have no bias (batchnorm follows); the first
  ``in_channels`` filters of every conv start as the identity (Dirac), an implicit residual
  that lets the plain net train like a shallow one at first.
- batchnorm with a frozen scale of 1 and a learned shift, eps 1e-12 and a fast running
  average (PyTorch momentum 0.4), because the scale was found not to help.
- global max pool (the 3x3 map of a 32x32 image), bias-free linear, logits x 1/9: the small
  output scale keeps early softmax outputs soft, as a smaller last-layer init would.

32 -> 31 (whitening) -> 15 -> 7 -> 3 -> 1. Trainable: 1,971,352 params for 10 classes (the
288 whitening weights and the 1,152 batchnorm scales are frozen).

The rest of the recipe belongs to the training loop: label smoothing, Nesterov SGD with a
64x learning rate on batchnorm biases, lookahead/EMA, flip + translate augmentation,
freezing the whitening bias after a few epochs, test-time flip.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .layers import Classifier

__all__ = ["AirBench", "patch_covariance"]


@torch.no_grad()
def _identity_init_(conv: nn.Conv2d) -> None:
    nn.init.dirac_(conv.weight[: conv.in_channels])
    if conv.bias is not None:
        conv.bias.zero_()


def _conv(in_ch: int, out_ch: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False)
    _identity_init_(conv)
    return conv


def _batchnorm(channels: int, momentum: float, eps: float, scale_trainable: bool) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels, eps=eps, momentum=momentum)
    bn.weight.requires_grad_(scale_trainable)
    return bn


class ConvGroup(nn.Module):
    """conv -> pool -> bn -> gelu -> conv -> bn -> gelu.

    Pooling right after the first conv halves the cost of everything that follows,
    including the batchnorm.
    """

    def __init__(self, in_ch: int, out_ch: int, bn_momentum: float, bn_eps: float,
                 bn_scale_trainable: bool) -> None:
        super().__init__()
        self.conv1 = _conv(in_ch, out_ch)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = _batchnorm(out_ch, bn_momentum, bn_eps, bn_scale_trainable)
        self.act1 = nn.GELU()
        self.conv2 = _conv(out_ch, out_ch)
        self.norm2 = _batchnorm(out_ch, bn_momentum, bn_eps, bn_scale_trainable)
        self.act2 = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.act1(self.norm1(self.pool(self.conv1(x))))
        return self.act2(self.norm2(self.conv2(x)))


@torch.no_grad()
def patch_covariance(images: Tensor, kernel_size: int, chunk: int = 256) -> Tensor:
    """Uncentred covariance of all kernel_size^2 patches, float64 on the CPU.

    Accumulated in chunks: 5,000 CIFAR images give about 4.8 million patches, too many
    to hold at once next to a training run. The images are standardised, so the mean is
    close to zero and the uncentred estimate is what the whitening needs.
    """
    x = images.detach().to("cpu", torch.float64)
    k, c = kernel_size, x.shape[1]
    total = torch.zeros(c * k * k, c * k * k, dtype=torch.float64)
    count = 0
    for part in x.split(chunk):
        patches = part.unfold(2, k, 1).unfold(3, k, 1)  # N, C, H', W', k, k
        flat = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * k * k)
        total += flat.T @ flat
        count += flat.shape[0]
    return total / count


class AirBench(Classifier):
    """The airbench94 network; see the module docstring for the design and its reasons."""

    def __init__(self, num_classes: int = 10, widths: Sequence[int] = (64, 256, 256),
                 whiten_kernel: int = 2, whiten_eps: float = 5e-4, bn_momentum: float = 0.4,
                 bn_eps: float = 1e-12, bn_scale_trainable: bool = False,
                 scale: float = 1 / 9, whiten_bias_epochs: int | None = 3) -> None:
        whiten_width = 2 * 3 * whiten_kernel**2
        whiten = nn.Conv2d(3, whiten_width, whiten_kernel, bias=True)
        _identity_init_(whiten)  # placeholder until init_from_data
        whiten.weight.requires_grad_(False)
        layers: list[nn.Module] = [whiten, nn.GELU()]
        in_ch = whiten_width
        for width in (int(w) for w in widths):
            layers.append(ConvGroup(in_ch, width, bn_momentum, bn_eps, bn_scale_trainable))
            in_ch = width
        neck = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(1))
        super().__init__(nn.Sequential(*layers), neck, nn.Linear(in_ch, num_classes, bias=False),
                         output_scale=scale)
        self.whiten_eps = float(whiten_eps)
        self.whiten_bias_epochs = None if whiten_bias_epochs is None else int(whiten_bias_epochs)

    def on_epoch_start(self, epoch: int) -> None:
        """Train the whitening bias for the first `whiten_bias_epochs` epochs only (None: always).

        airbench94 freezes it after 3: it settles early, and later updates at the high learning
        rate only add noise to the first layer every other layer builds on. Called by the trainer
        before every epoch, a resumed run included, so the state follows the epoch, not the history.
        """
        if self.whiten_bias_epochs is not None:
            self.whiten.bias.requires_grad_(epoch < self.whiten_bias_epochs)

    @property
    def whiten(self) -> nn.Conv2d:
        return self.trunk[0]

    @torch.no_grad()
    def init_from_data(self, images: Tensor) -> None:
        """Set the whitening filters from standardised training images (a few thousand).

        Whitening the 2x2 patches up front decorrelates neighbouring pixels and channels,
        which the write-up found worth about a third of the training epochs.
        """
        conv = self.whiten
        c, k = conv.in_channels, conv.kernel_size[0]
        eigenvalues, eigenvectors = torch.linalg.eigh(patch_covariance(images, k))
        # eigh sorts ascending; put the strongest directions first, as the filter order.
        eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
        filters = eigenvectors.T.reshape(-1, c, k, k)
        filters = filters / torch.sqrt(eigenvalues + self.whiten_eps).view(-1, 1, 1, 1)
        conv.weight.copy_(torch.cat([filters, -filters]).to(conv.weight))
