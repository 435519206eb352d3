"""Structured-config schemas: the typed shape of every block that is not a `_target_` builder.

Registered in Hydra's ConfigStore and named first in `conf/train.yaml`'s defaults (the data options
name theirs), so Hydra itself type-checks every override before the task starts: a wrong type
(`trainer.epochs=ten`) or an unknown key (`+trainer.epoch=3`, `+unknown.key=1`) fails naming the
key, and `tracking.experiment=2024` is the string "2024". The `_target_` groups (model, optimizer,
schedule) stay open: their keys are the builders' keyword arguments, checked when they are built.
Range checks a type cannot express live in `config.rules`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

SCHEMA_GROUP = "cifar_sweep_schema"  # data/<option> schemas
TRAIN_SCHEMA = "cifar_sweep_train_schema"


@dataclass
class Paths:
    root: str = MISSING
    repo: str = MISSING
    runs: str = MISSING
    cache: str = MISSING


@dataclass
class Trainer:
    epochs: int = 10
    batch_size: int = 128
    eval_batch_size: int = 1000
    device: str = "auto"
    precision: str = "auto"  # auto | fp32 | tf32 | bf16 | fp16
    threads: Optional[int] = None
    compile: bool = False
    channels_last: bool = True
    label_smoothing: float = 0.0
    tta_flip: bool = False
    ema_decay: Optional[float] = None
    ema_every: int = 1
    lookahead: bool = False
    limit_train_batches: Optional[int] = None
    progress: Any = "auto"  # auto | true | false
    log_every_n_steps: int = 0


@dataclass
class Tracking:
    uri: str = MISSING
    experiment: str = "cifar_sweep"
    run_name: Optional[str] = None
    misclassified_grid: bool = True
    grid_tiles: int = 64
    checkpoint: bool = True
    system_metrics_s: float = 5.0


@dataclass
class Pruning:
    enabled: bool = False  # the older spelling of pruner=median
    pruner: str = "none"  # none | median | halving | hyperband (Optuna's SuccessiveHalving / Hyperband)
    after_epoch: int = 1  # median: first epoch (0-based) that may stop a run
    min_siblings: int = 2  # median: siblings that must have reached that epoch
    min_resource: int = 1  # halving, hyperband: epochs (0-based index) of the first rung
    reduction_factor: int = 3  # halving, hyperband: 1 in reduction_factor goes on at each rung
    min_early_stopping_rate: int = 0  # halving: the first rung is min_resource * reduction_factor**rate


@dataclass
class Sweep:
    force: bool = False
    dry_run: bool = False
    rerun_pruned: bool = False  # a relaunch runs again the jobs a pruner stopped (they are skipped otherwise)
    pruning: Pruning = field(default_factory=Pruning)


@dataclass
class Diagnostics:
    """The `diagnostics:` block; also the plain options object the diagnostics code takes."""

    per_class: bool = True            # per-class accuracy metrics + per_class.csv
    misclassified_table: bool = True  # misclassified.csv: every wrong test index
    confusion: bool = True            # confusion_matrix.png + .csv (counts) + _normalized.csv
    pr_curves: bool = True            # pr_curves.png + class_ap/<class> and mean_ap metrics
    embedding: bool = True            # embedding_pca.png + embedding.npz (features, labels, 2-D points)
    embedding_points: int = 2000      # test images embedded (the first N of the shuffled test split)
    embedding_max_mb: float = 6.0     # cap on the float16 features: fewer points for wide features
    tsne: bool = False                # embedding_tsne.png too (scikit-learn; 10-40 s on 2 cores: asked for, not default)
    tsne_points: int = 500            # t-SNE costs far more than linearly: a subset of the points
    max_image_pixels: int = 2_000_000  # per figure (width * height)
    figures: Any = "auto"             # auto: drawn for a single run, not for a sweep's jobs | true | false


@dataclass
class Reported:
    """A write-up preset's reported accuracy (a fraction) and where it was reported."""

    test_acc: Optional[float] = None
    source: Optional[str] = None


@dataclass
class Augment:
    crop_padding: int = 0
    pad_mode: str = "reflect"
    flip: Any = False  # true | false | alternate
    cutout: int = 0


@dataclass
class Data:
    """Keys every data option has; each loader's own keys are declared by its schema below."""

    _target_: str = MISSING
    val_size: int = 5000
    classes: Optional[list[str]] = None
    augment: Augment = field(default_factory=Augment)


@dataclass
class FolderData(Data):
    root: str = MISSING
    cache_dir: str = MISSING
    sha256: Optional[str] = None


@dataclass
class Cifar10Data(Data):
    root: str = MISSING
    download: bool = True
    cache_dir: str = MISSING


@dataclass
class SyntheticData(Data):
    n_train: int = 2000
    n_test: int = 500
    num_classes: int = 10


@dataclass
class Train:
    seed: int = 0
    resume: Any = "auto"  # auto | true | false | a checkpoint path
    paths: Paths = field(default_factory=Paths)
    trainer: Trainer = field(default_factory=Trainer)
    tracking: Tracking = field(default_factory=Tracking)
    sweep: Sweep = field(default_factory=Sweep)
    diagnostics: Diagnostics = field(default_factory=Diagnostics)
    reported: Reported = field(default_factory=Reported)
    model: Any = MISSING
    optimizer: Any = MISSING
    schedule: Any = MISSING
    data: Any = MISSING


DATA_SCHEMAS = {"folder": FolderData, "cifar10": Cifar10Data, "synthetic": SyntheticData}


def register() -> None:
    """Put the schemas where the config files' defaults lists find them (idempotent)."""
    store = ConfigStore.instance()
    store.store(name=TRAIN_SCHEMA, node=Train)
    for name, node in DATA_SCHEMAS.items():
        store.store(group=f"{SCHEMA_GROUP}/data", name=name, node=node)


register()
