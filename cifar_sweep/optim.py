"""Optimizers named by conf/optimizer/*.yaml (`_partial_`, completed with the model).

The one thing added to torch.optim: weight decay applies to weights of convolutions and linear
layers only. Norm scales and biases (every parameter with fewer than 2 dimensions) are left
undecayed, as the fast CIFAR recipes do: shrinking them only fights the normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def param_groups(model: nn.Module, lr: float, weight_decay: float, norm_bias_lr_scale: float = 1.0) -> list[dict]:
    """Two groups: decayed weights, and undecayed norms/biases (airbench trains the latter 64x faster)."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay, "lr": lr}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "lr": lr * norm_bias_lr_scale})
    return groups


def sgd(
    model: nn.Module,
    lr: float,
    momentum: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    norm_bias_lr_scale: float = 1.0,
) -> torch.optim.SGD:
    if nesterov and momentum <= 0:
        raise ValueError("optimizer.nesterov=true needs optimizer.momentum > 0")
    groups = param_groups(model, lr, weight_decay, norm_bias_lr_scale)
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)


def adam(
    model: nn.Module, lr: float, betas: Sequence[float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0
) -> torch.optim.Adam:
    return torch.optim.Adam(param_groups(model, lr, weight_decay), lr=lr, betas=tuple(betas), eps=eps)


def adamw(
    model: nn.Module, lr: float, betas: Sequence[float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.05
) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, lr, weight_decay), lr=lr, betas=tuple(betas), eps=eps)


def rmsprop(
    model: nn.Module, lr: float, alpha: float = 0.9, eps: float = 1e-7, momentum: float = 0.0, weight_decay: float = 0.0
) -> torch.optim.RMSprop:
    return torch.optim.RMSprop(param_groups(model, lr, weight_decay), lr=lr, alpha=alpha, eps=eps, momentum=momentum)
