"""What a composed config must pass before anything starts (no run, no data, no torch), in one place.

The schemas (`config.schema`) type every value; this adds what a type cannot say: keys that
Hydra's `+key=value` forced into a typed block, numeric ranges, the choices of a few strings, and
the `_target_` allowlist. Every error names the key and the fix, in one line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cifar_sweep.config.keys import unknown_key_message
from cifar_sweep.data.options import FLIPS, PAD_MODES
from cifar_sweep.errors import CifarSweepError
from cifar_sweep.training.machine import PRECISIONS

# What a config may name in `_target_`: the builders the training loop can run. A network must be a
# zoo Classifier (init_from_data, on_epoch_start, features), an optimizer a factory that takes the
# model, a schedule one that takes total_steps; torch's own classes are none of these (torchvision's
# networks come in through model=torchvision). Anything else (e.g. `model._target_=os.system`) is
# refused before it is called: a config file or command line must never run arbitrary code.
GROUP_TARGETS = {
    "model": "cifar_sweep.models.",
    "optimizer": "cifar_sweep.training.optim.",
    "schedule": "cifar_sweep.training.schedules.",
    "data": "cifar_sweep.data.",
}
TARGET_ALLOWLIST = ("cifar_sweep.",)  # any other block that names a builder

DEVICES = ("auto", "cpu", "cuda", "mps")


class ConfigError(CifarSweepError, ValueError):
    """A config mistake the user fixes on the command line; printed as one line."""


# Names whose command-line text is the value: Hydra's override grammar types `true`, `1e3` or `null`
# before the schema sees them, and `str(True)` is not the name the user typed.
LITERAL_KEYS = ("tracking.experiment", "tracking.run_name")


def keep_literal_names(cfg: DictConfig, overrides: Iterable[str]) -> None:
    """Set each LITERAL_KEYS value to the exact text of its command-line override, if any."""
    for override in overrides:
        key, sep, text = str(override).partition("=")
        if sep and key in LITERAL_KEYS and text not in ("null", ""):
            if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
                text = text[1:-1]
            OmegaConf.update(cfg, key, text, merge=False)


def validate(cfg: DictConfig) -> None:
    _check_known_keys(cfg, "")
    _check_targets(OmegaConf.to_container(cfg, resolve=False))
    _check_ranges(cfg)


def _check_known_keys(node: Any, path: str) -> None:
    """Hydra's `+key=value` adds keys even to typed blocks; refuse the ones a schema lacks."""
    if not isinstance(node, DictConfig) or node._is_none() or node._is_missing():
        return
    schema = OmegaConf.get_type(node)
    if dataclasses.is_dataclass(schema):
        known = {f.name for f in dataclasses.fields(schema)}
        for key in node.keys():
            if key not in known:
                where = f"{path}.{key}" if path else str(key)
                raise ConfigError(unknown_key_message(where))
    for key in node.keys():
        if key == "hydra":
            continue
        child = node._get_node(key)
        _check_known_keys(child, f"{path}.{key}" if path else str(key))


def _targets(node: Any, path: str = "") -> list[tuple[str, str]]:
    found = []
    if isinstance(node, Mapping):
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            if key == "_target_":
                found.append((where, str(value)))
            elif key != "hydra":
                found += _targets(value, where)
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            found += _targets(value, f"{path}[{i}]")
    return found


def _check_targets(tree: Any) -> None:
    for where, target in _targets(tree):
        group = where.split(".")[0]
        allowed = GROUP_TARGETS.get(group) if where == f"{group}._target_" else None
        prefixes = (allowed,) if allowed else TARGET_ALLOWLIST
        if not target.startswith(prefixes):
            raise ConfigError(f"{where}={target!r} is not allowed: it must name a builder in "
                              f"{', '.join(p.rstrip('.') for p in prefixes)}"
                              + (" (torchvision networks: model=torchvision model.arch=NAME)" if group == "model" else ""))


def check_targets_exist(cfg: DictConfig) -> None:
    """Every `_target_` names something importable and callable. Imports the builders' modules
    (torch among them), so it runs after the cheap checks, but still before any run exists."""
    from hydra._internal.utils import _locate

    for where, target in _targets(OmegaConf.to_container(cfg, resolve=False)):
        try:
            found = _locate(target)
        except Exception as err:
            raise ConfigError(f"{where}={target!r} does not exist ({_first_line(err)}); "
                              "check the spelling against conf/") from None
        if not callable(found):
            raise ConfigError(f"{where}={target!r} is not callable")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _at_least(key: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{key}={value!r} must be an integer >= {low}")


def _check_ranges(cfg: DictConfig) -> None:
    t = cfg.trainer
    for key, low in (("epochs", 1), ("batch_size", 1), ("eval_batch_size", 1), ("ema_every", 1),
                     ("log_every_n_steps", 0)):
        _at_least(f"trainer.{key}", t[key], low)
    _at_least("seed", cfg.seed, 0)
    if t.limit_train_batches is not None:
        _at_least("trainer.limit_train_batches", t.limit_train_batches, 1)
    if t.threads is not None:
        _at_least("trainer.threads", t.threads, 1)
    if not str(t.device).startswith("cuda:") and t.device not in DEVICES:
        raise ConfigError(f"trainer.device={t.device!r} must be one of {', '.join(DEVICES)} or cuda:N")
    if t.precision not in PRECISIONS:
        raise ConfigError(f"trainer.precision={t.precision!r} must be one of {', '.join(PRECISIONS)}")
    if t.progress not in ("auto", True, False):
        raise ConfigError(f"trainer.progress={t.progress!r} must be auto, true or false")
    lr = cfg.optimizer.get("lr")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ConfigError(f"optimizer.lr={lr!r} must be a positive number, e.g. optimizer.lr=0.01")
    if not 0.0 <= t.label_smoothing < 1.0:
        raise ConfigError(f"trainer.label_smoothing={t.label_smoothing!r} must be a number in [0, 1)")
    if t.ema_decay is not None and not 0.0 < t.ema_decay < 1.0:
        raise ConfigError(f"trainer.ema_decay={t.ema_decay!r} must be in (0, 1), e.g. 0.99")
    if t.lookahead and t.ema_decay is None:
        raise ConfigError("trainer.lookahead=true needs trainer.ema_decay (its peak decay, e.g. trainer.ema_decay=0.77)")
    _at_least("tracking.grid_tiles", cfg.tracking.grid_tiles, 1)
    if not cfg.tracking.system_metrics_s >= 0:
        raise ConfigError(f"tracking.system_metrics_s={cfg.tracking.system_metrics_s!r} must be seconds >= 0 (0 = off)")
    if not str(cfg.tracking.experiment).strip():
        raise ConfigError("tracking.experiment must not be empty")
    _check_data(cfg.data)
    d = cfg.diagnostics
    if d.figures not in ("auto", True, False):
        raise ConfigError(f"diagnostics.figures={d.figures!r} must be auto, true or false")
    for key in ("embedding_points", "tsne_points", "max_image_pixels"):
        _at_least(f"diagnostics.{key}", d[key], 1)
    _at_least("sweep.pruning.after_epoch", cfg.sweep.pruning.after_epoch, 0)
    _at_least("sweep.pruning.min_siblings", cfg.sweep.pruning.min_siblings, 1)
    if cfg.sweep.pruning.pruner not in ("none", "median", "halving", "hyperband"):
        raise ConfigError(f"sweep.pruning.pruner={cfg.sweep.pruning.pruner!r} must be none, median, halving or hyperband")
    _at_least("sweep.pruning.min_resource", cfg.sweep.pruning.min_resource, 1)
    _at_least("sweep.pruning.reduction_factor", cfg.sweep.pruning.reduction_factor, 2)
    _at_least("sweep.pruning.min_early_stopping_rate", cfg.sweep.pruning.min_early_stopping_rate, 0)


def _check_data(data: DictConfig) -> None:
    _at_least("data.val_size", data.get("val_size"), 0)
    augment = data.augment
    _at_least("data.augment.crop_padding", augment.crop_padding, 0)
    _at_least("data.augment.cutout", augment.cutout, 0)
    if augment.flip not in FLIPS:
        raise ConfigError(f"data.augment.flip={augment.flip!r} must be true, false or alternate")
    if augment.pad_mode not in PAD_MODES:
        raise ConfigError(f"data.augment.pad_mode={augment.pad_mode!r} must be one of {', '.join(PAD_MODES)}")
    if str(data.get("_target_", "")).endswith(".load_folder"):
        from cifar_sweep.data.roots import resolve_root  # torch-free: a wrong path fails in milliseconds

        resolve_root(data.root)
