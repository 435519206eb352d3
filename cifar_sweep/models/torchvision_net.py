"""Any torchvision classification network, as a zoo `Classifier` the training loop can run.

torchvision's builders take `num_classes` and return a network whose last `nn.Linear` is the head
(resnet's `fc`, vgg's and mobilenet's `classifier[-1]`, ...). It is split into the zoo's trunk
(the convolutions), neck (pool, flatten, hidden layers) and head, so the embedding, the feature maps
and the weight average work on it as on every network of the zoo. Weights start from
scratch (`weights=None`): pretrained ImageNet weights would need a download, and CIFAR-10's 32x32
images are not what they were trained on.
"""

from __future__ import annotations

from torch import nn

from cifar_sweep.errors import CifarSweepError

from .layers import Classifier


class UnknownTorchvisionModel(CifarSweepError, ValueError):
    """model.arch names no torchvision classification network."""


def classification_models() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _last_linear(net: nn.Module) -> tuple[str, nn.Linear]:
    linears = [(name, m) for name, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UnknownTorchvisionModel(f"torchvision's {type(net).__name__} has no linear head to train")
    return linears[-1]


def _replace(net: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    setattr(parent, child, new)


def _split(net: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(trunk, neck, head) of a torchvision network, the trunk convolutional where the family says
    where its convolutions end: resnets (`layer4`, `avgpool`, `fc`), and the families with
    `features`, `avgpool` and a `classifier` ending in a Linear (vgg, mobilenet, efficientnet, ...).
    Any other: the whole network but its last Linear is the trunk (features() still works; its feature
    maps are not shown apart)."""
    if all(hasattr(net, k) for k in ("layer4", "avgpool", "fc")):
        stem = [getattr(net, k) for k in ("conv1", "bn1", "relu", "maxpool") if hasattr(net, k)]
        layers = [getattr(net, f"layer{i}") for i in range(1, 5)]
        return nn.Sequential(*stem, *layers), nn.Sequential(net.avgpool, nn.Flatten()), net.fc
    classifier = getattr(net, "classifier", None)
    if (hasattr(net, "features") and hasattr(net, "avgpool") and isinstance(classifier, nn.Sequential)
            and isinstance(classifier[-1], nn.Linear)):
        return net.features, nn.Sequential(net.avgpool, nn.Flatten(), *classifier[:-1]), classifier[-1]
    name, head = _last_linear(net)
    _replace(net, name, nn.Identity())
    return net, nn.Flatten(), head


class TorchvisionClassifier(Classifier):
    """`torchvision.models.get_model(arch, num_classes=...)`, trunk, neck and head apart."""

    def __init__(self, arch: str, num_classes: int = 10, **kwargs) -> None:
        import torchvision

        names = classification_models()
        if arch not in names:
            raise UnknownTorchvisionModel(
                f"model.arch={arch!r} is not a torchvision classification model; e.g. {', '.join(names[:8])}, ...")
        net = torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
        super().__init__(*_split(net))
        self.arch = arch

    def extra_repr(self) -> str:
        return f"arch={self.arch}"
