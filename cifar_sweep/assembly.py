"""The build of a run from its composed config, written once.

`assemble_run(cfg, hw)` seeds, loads the data and builds the network, the batches, the optimizer,
the schedule, the fp16 scaler, the compile wrapper and the weight average exactly as a run trains
them. The entry point, the benchmarks and the commands that rebuild a logged run all come through
here, so a benchmark's run cannot drift from the real one. `rebuild_logged_run(config)` is the part
a finished run needs again: its data and its network, from the `config.yaml` it logged.

This room knows Hydra (it instantiates the config's `_target_`s) but not MLflow: what gets logged is
the caller's business.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from cifar_sweep.data.augment import Augment
from cifar_sweep.data.batches import Standardize, TrainBatches
from cifar_sweep.data.bundle import DataBundle
from cifar_sweep.data.options import loader_kwargs
from cifar_sweep.models.summary import model_summary
from cifar_sweep.training.averaging import weight_average
from cifar_sweep.training.device import Hardware
from cifar_sweep.training.engine import EvalResult
from cifar_sweep.training.loop import EpochHook, EvalSet, Trainee, run_epochs

# Images the data-dependent initialisation sees (airbench's whitening needs a few thousand).
INIT_IMAGES = 5000


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_data(data_cfg: Any, seed: int) -> DataBundle:
    """The data block of a config (a DictConfig or the plain dict of a logged config.yaml), loaded."""
    if isinstance(data_cfg, DictConfig):
        data_cfg = OmegaConf.to_container(data_cfg, resolve=True)
    return instantiate(loader_kwargs(data_cfg), seed=seed)


@dataclass
class AssembledRun:
    """Everything a run trains with, built from one config on one device."""

    cfg: DictConfig
    hw: Hardware
    bundle: DataBundle
    model: nn.Module
    summary: str  # the per-layer table (model_summary.txt)
    standardize: Standardize
    trainee: Trainee
    val: EvalSet
    total_steps: int
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def batches(self) -> TrainBatches:
        return self.trainee.batches

    def test_set(self) -> EvalSet:
        t = self.cfg.trainer
        test = self.bundle.test
        return EvalSet(test.images.to(self.hw.device), test.labels.to(self.hw.device), t.eval_batch_size,
                       self.standardize, t.tta_flip)

    def resume_from(self, found) -> None:
        """Load a checkpoint (training.checkpoint.Found) into the fresh objects; its epochs become the history."""
        self.history[:] = self.trainee.restore(found)

    def run_epochs(self, checkpoint_dir: Path, checkpoint_record: Callable[[list[dict]], dict[str, Any]],
                   on_epoch: EpochHook, progress=None, step_hook=None) -> EvalResult | None:
        """Train the remaining epochs into `self.history`; the last evaluation (None if none ran)."""
        t = self.cfg.trainer
        extra = {k: v for k, v in (("progress", progress), ("step_hook", step_hook)) if v is not None}
        return run_epochs(self.trainee, self.hw, self.val, self.history, t.epochs, checkpoint_dir, checkpoint_record,
                          on_epoch, label_smoothing=t.label_smoothing, ema_every=t.ema_every, **extra)


def assemble_run(cfg: DictConfig, hw: Hardware) -> AssembledRun:
    """Seed, load the data and build every object the epochs need, in the order a run always has.

    The order is part of the result: the model summary runs the network on a random input
    (torchinfo), so it draws from the global RNG between the network's init and the rest.
    """
    t = cfg.trainer
    seed_everything(cfg.seed)
    bundle = load_data(cfg.data, cfg.seed)
    model = instantiate(cfg.model, num_classes=len(bundle.classes))
    summary = model_summary(model)
    model = model.to(hw.device, memory_format=torch.channels_last if t.channels_last else torch.contiguous_format)

    standardize = Standardize(bundle.mean, bundle.std, hw.device, t.channels_last)
    train_x, train_y = bundle.train.images.to(hw.device), bundle.train.labels.to(hw.device)
    model.init_from_data(standardize(train_x[:INIT_IMAGES]))
    generator = torch.Generator(device=hw.device).manual_seed(cfg.seed)
    batches = TrainBatches(train_x, train_y, t.batch_size, standardize, Augment(**cfg.data.augment), generator,
                           limit_batches=t.limit_train_batches)
    optimizer = instantiate(cfg.optimizer)(model)
    total_steps = t.epochs * len(batches)
    trainee = Trainee(
        model=model, step_model=torch.compile(model) if t.compile else model, optimizer=optimizer,
        scheduler=instantiate(cfg.schedule)(optimizer, total_steps=total_steps), batches=batches, generator=generator,
        scaler=torch.amp.GradScaler(hw.device.type) if hw.precision == "fp16" else None,
        ema=weight_average(model, t.ema_decay, t.lookahead, total_updates=total_steps // t.ema_every),
    )
    val = EvalSet(bundle.val.images.to(hw.device), bundle.val.labels.to(hw.device), t.eval_batch_size,
                  standardize, t.tta_flip)
    return AssembledRun(cfg, hw, bundle, model, summary, standardize, trainee, val, total_steps)


@dataclass
class LoggedRun:
    """A finished run's network (weights loaded) and, when asked for, its data."""

    model: nn.Module
    classes: list[str] | None
    bundle: DataBundle | None


def rebuild_logged_run(config: DictConfig, state_dict: dict[str, torch.Tensor] | None = None, *,
                       with_data: bool = True, num_classes: int | None = None) -> LoggedRun:
    """The network (and data) of a logged run, from its `config.yaml`, built as training built them.

    `num_classes` stands in for the data when `with_data=False` (the caller read it elsewhere).
    """
    bundle = load_data(config.data, config.get("seed", 0)) if with_data else None
    classes = list(bundle.classes) if bundle is not None else None
    n = len(classes) if classes else num_classes
    if n is None:
        raise ValueError("rebuild_logged_run needs the data or num_classes to size the network's head")
    model = instantiate(config.model, num_classes=n)
    if state_dict is not None:
        model.load_state_dict(state_dict)
    return LoggedRun(model.eval(), classes, bundle)
