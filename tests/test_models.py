"""Every option of conf/model/ builds, has the spec's parameter count and runs.

The config folder is the registry: the model list is globbed from conf/model/, so a new
YAML is tested without editing this file (it only needs an EXPECTED_PARAMS entry).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig

from cifar_sweep.models import count_params

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
MODEL_NAMES = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))

# Trainable parameters for 10 classes (models.md; airbench and resnet9 are this project's builds).
EXPECTED_PARAMS = {
    "logreg": 30_730,
    "mlp": 411_146,
    "cnn_simple": 42_442,
    "cnn_adv": 642_538,
    "tf_convnet": 7_083_004,
    "resnet_seed": 302_768,
    "keras_cnn": 1_250_858,
    "lenet": 62_006,
    "vgg16_seed": 10_195_786,
    "resnet18": 11_173_962,
    "resnet9": 6_573_120,
    "airbench": 1_971_352,  # whitening weights and batchnorm scales are frozen, as in airbench94
    "torchvision": 11_181_642,  # torchvision's ImageNet resnet18 (the default model.arch), 10 classes
}
EXPECTED_PARAMS_2_CLASSES = {"resnet_seed": 301_744}


@lru_cache(maxsize=None)
def model_config(name: str) -> DictConfig:
    """The composed `model` group for one option (the one place that knows how to compose)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose(overrides=[f"+model={name}"]).model


def build(name: str, num_classes: int = 10) -> torch.nn.Module:
    torch.manual_seed(0)
    return instantiate(model_config(name), num_classes=num_classes)


def batch(n: int = 4, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_registry_is_complete():
    assert set(MODEL_NAMES) >= {"logreg", "mlp", "cnn_simple"}
    assert not set(MODEL_NAMES) - set(EXPECTED_PARAMS), "add the new model to EXPECTED_PARAMS"


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_config_leaves_num_classes_to_the_loop(name):
    assert "num_classes" not in model_config(name)


@pytest.mark.parametrize("name", MODEL_NAMES)
@torch.no_grad()
def test_param_count_forward_and_features(name):
    model = build(name)
    assert count_params(model) == EXPECTED_PARAMS[name]
    x = batch()
    logits = model.eval()(x)
    assert logits.shape == (4, 10) and torch.isfinite(logits).all()
    # The advertised relation: forward is the last layer (and output scale) on features.
    feats = model.features(x)
    assert feats.ndim == 2 and feats.shape[0] == 4
    torch.testing.assert_close(logits, model.head(feats) * model.output_scale)
    logits = model.train()(x)
    assert logits.shape == (4, 10) and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", MODEL_NAMES)
@torch.no_grad()
def test_two_classes(name):
    model = build(name, num_classes=2).eval()
    if name in EXPECTED_PARAMS_2_CLASSES:
        assert count_params(model) == EXPECTED_PARAMS_2_CLASSES[name]
    assert model(batch()).shape == (4, 2)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_channels_last_bf16_autocast_trains(name):
    model = build(name).to(memory_format=torch.channels_last).train()
    x = batch().to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
    assert logits.shape == (4, 10)
    assert torch.isfinite(logits.float()).all()
    logits.float().logsumexp(1).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", MODEL_NAMES)
@torch.no_grad()
def test_trunk_takes_larger_images(name):
    model = build(name).eval()
    if not any(isinstance(m, torch.nn.Conv2d) for m in model.modules()):
        pytest.skip("no conv part")
    maps = model.trunk(batch(n=1, size=64))
    assert maps.ndim == 4 and torch.isfinite(maps).all()


def test_tf_same_conv_and_pool_keep_the_size():
    model = build("tf_convnet").eval()
    with torch.no_grad():
        maps = model.trunk(batch())
    assert maps.shape == (4, 18, 32, 32)


def test_tf_same_maxpool_ignores_padding():
    from cifar_sweep.models.layers import TFSameMaxPool2d

    x = -torch.ones(1, 1, 4, 4)
    # Zero padding would leak 0 into the borders; TF's "same" pool never sees the padding.
    assert torch.equal(TFSameMaxPool2d(4)(x), x)


def test_tf_same_maxpool_matches_one_square_window_in_value_and_gradient():
    from cifar_sweep.models.layers import TFSameMaxPool2d

    torch.manual_seed(0)
    x = torch.randn(2, 3, 11, 11, requires_grad=True)
    pool = TFSameMaxPool2d(8)
    square = torch.nn.functional.max_pool2d(
        torch.nn.functional.pad(x, pool.pad, value=float("-inf")), 8, stride=1)
    ours = pool(x)
    assert torch.equal(ours, square)
    weights = torch.randn_like(ours)
    # Each cell collects its windows' gradients in another order: equal up to rounding.
    torch.testing.assert_close(torch.autograd.grad((ours * weights).sum(), x)[0],
                               torch.autograd.grad((square * weights).sum(), x)[0])


def test_resnet_seed_init_bounds():
    model = build("resnet_seed")
    stem = model.trunk[0][0]
    bound = (1.0 / (3 * 3 * 3)) ** 0.5
    assert stem.weight.abs().max() <= bound
    assert stem.weight.abs().max() > 0.9 * bound
    assert model.head.bias is None


def test_airbench_whitening_decorrelates_patches():
    model = build("airbench")
    # Correlated channels, so whitening has something to undo.
    base = torch.randn(256, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    images = base.repeat(1, 3, 1, 1) + 0.3 * torch.randn(256, 3, 16, 16)
    model.init_from_data(images)
    conv = model.whiten
    assert not conv.weight.requires_grad
    half = conv.out_channels // 2
    torch.testing.assert_close(conv.weight[half:], -conv.weight[:half])
    with torch.no_grad():
        out = torch.nn.functional.conv2d(images, conv.weight[:half])
    flat = out.transpose(0, 1).reshape(half, -1)
    cov = flat @ flat.T / flat.shape[1]
    torch.testing.assert_close(cov, torch.eye(half), atol=2e-2, rtol=0)


def test_airbench_whitening_bias_trains_for_its_epochs_only():
    """airbench94 trains the whitening bias for 3 epochs; an SGD step after that leaves it as it is."""
    from cifar_sweep.training.optim import sgd

    model = build("airbench")
    assert model.whiten_bias_epochs == 3
    optimizer = sgd(model, lr=0.5, momentum=0.9, nesterov=True)
    x, y = batch(8), torch.arange(8) % 10

    def step_changes_bias(epoch: int) -> bool:
        model.on_epoch_start(epoch)
        before = model.whiten.bias.detach().clone()
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        return not torch.equal(before, model.whiten.bias)

    assert [step_changes_bias(e) for e in range(5)] == [True, True, True, False, False]


def test_norm_lr_scale_applies_to_norm_layers_only():
    """norm_bias_lr_scale speeds up batchnorm parameters, not other biases (airbench's whitening bias)."""
    from cifar_sweep.training.optim import param_groups

    model = build("airbench")
    groups = param_groups(model, lr=0.1, weight_decay=5e-4, norm_bias_lr_scale=64.0)
    by_id = {id(p): g for g in groups for p in g["params"]}
    norm_shifts = [m.bias for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norm_shifts and all(by_id[id(b)]["lr"] == pytest.approx(6.4) for b in norm_shifts)
    assert all(by_id[id(b)]["weight_decay"] == 0.0 for b in norm_shifts)
    assert by_id[id(model.whiten.bias)]["lr"] == pytest.approx(0.1)
    assert by_id[id(model.whiten.bias)]["weight_decay"] == 0.0
    assert by_id[id(model.head.weight)] == {**by_id[id(model.head.weight)], "lr": 0.1, "weight_decay": 5e-4}
    # Frozen parameters (whitening filters, batchnorm scales) are in no group.
    assert id(model.whiten.weight) not in by_id
    assert sum(len(g["params"]) for g in groups) == sum(p.requires_grad for p in model.parameters())


def test_pool_first_trunk_is_exact():
    """cnn_simple's trunk pools before its ReLUs: the same loss, gradients and weights, bit for bit."""
    from torch import nn

    from cifar_sweep.models.keras_tutorial import CNNSimple

    torch.manual_seed(0)
    fast = CNNSimple()
    listed = CNNSimple()
    listed.load_state_dict(fast.state_dict())
    listed.trunk = nn.Sequential(*listed.trunk)  # the layers in their listed order
    x = torch.randn(16, 3, 32, 32)
    y = torch.arange(16) % 10
    for model in (fast, listed):
        torch.nn.functional.cross_entropy(model(x), y).backward()
    for a, b in zip(fast.parameters(), listed.parameters()):
        assert torch.equal(a.grad, b.grad)
    seen = []
    fast.trunk[1].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    fast(x)
    assert seen == [torch.Size([16, 32, 30, 30])]  # a hooked ReLU sees its listed input
