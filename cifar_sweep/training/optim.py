"""Optimizers named by conf/optimizer/*.yaml (`_partial_`, completed with the model).

Two things are added to torch.optim. Weight decay applies to weights of convolutions and linear
layers only: norm scales and biases (every parameter with fewer than 2 dimensions) are left
undecayed, as the fast CIFAR recipes do, because shrinking them only fights the normalisation.
And `norm_bias_lr_scale` multiplies the learning rate of the normalisation layers' parameters
(airbench trains its batchnorm shifts 64x faster); other biases, such as airbench's whitening bias,
keep the base rate.

On a GPU, SGD, Adam and AdamW run fused (one kernel for the whole update). Besides being faster,
a fused optimizer takes the fp16 grad scaler's "found inf" flag on the device; with any other,
`GradScaler.step` reads that flag on the host, a synchronisation every step. On the CPU the
default implementation stays: it is the one the CPU results were measured with.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


_NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def param_groups(model: nn.Module, lr: float, weight_decay: float, norm_bias_lr_scale: float = 1.0) -> list[dict]:
    """Decayed weights; undecayed other biases; undecayed norm parameters at lr * norm_bias_lr_scale.

    Empty groups are left out. Parameters frozen now (requires_grad False) are left out too; a
    parameter a model freezes later (airbench's whitening bias) stays in its group and simply gets
    no gradient, which torch.optim skips.
    """
    norm_params = {id(p) for m in model.modules() if isinstance(m, _NORM_LAYERS) for p in m.parameters(recurse=False)}
    decay, no_decay, norms = [], [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        if id(param) in norm_params:
            norms.append(param)
        else:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay, "lr": lr},
              {"params": no_decay, "weight_decay": 0.0, "lr": lr},
              {"params": norms, "weight_decay": 0.0, "lr": lr * norm_bias_lr_scale}]
    return [g for g in groups if g["params"]]


def _fused(model: nn.Module) -> dict:
    """`fused=True` when every parameter is on a CUDA device (built after `model.to(device)`)."""
    params = list(model.parameters())
    return {"fused": True} if params and all(p.is_cuda and p.is_floating_point() for p in params) else {}


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
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov, **_fused(model))


def adam(
    model: nn.Module, lr: float, betas: Sequence[float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0
) -> torch.optim.Adam:
    return torch.optim.Adam(param_groups(model, lr, weight_decay), lr=lr, betas=tuple(betas), eps=eps, **_fused(model))


def adamw(
    model: nn.Module, lr: float, betas: Sequence[float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.05
) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, lr, weight_decay), lr=lr, betas=tuple(betas), eps=eps,
                             **_fused(model))


def rmsprop(
    model: nn.Module, lr: float, alpha: float = 0.9, eps: float = 1e-7, momentum: float = 0.0, weight_decay: float = 0.0
) -> torch.optim.RMSprop:
    return torch.optim.RMSprop(param_groups(model, lr, weight_decay), lr=lr, alpha=alpha, eps=eps, momentum=momentum)
