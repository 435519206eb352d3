"""What identifies a run, from its resolved config: flattened params, `config_hash`, a readable name.

Torch-free: training writes these and the reporting commands group by them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

# Keys that do not change what is learned, only where or how fast: runs differing in these alone
# share a config_hash, so seeds fold together and device pairs line up.
HASH_EXCLUDED = (
    "seed",
    "trainer.device",
    "trainer.threads",
    "trainer.progress",
    "trainer.log_every_n_steps",
    "trainer.compile",
    "data.root",
    "data.cache_dir",
    "paths",
    "tracking",
    "diagnostics",
    "resume",
    "sweep",  # sweep.force / dry_run / pruning: how a sweep runs a job, not what it learns
)


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values (MLflow shows them as text)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _excluded(key: str, excluded: Iterable[str]) -> bool:
    return any(key == e or key.startswith(e + ".") for e in excluded)


def hashed_items(resolved: Mapping[str, Any], excluded: Iterable[str] = HASH_EXCLUDED) -> dict[str, Any]:
    """The flattened keys that decide what is learned (what `config_hash` covers)."""
    return {k: v for k, v in flatten(resolved).items() if not _excluded(k, excluded)}


def config_hash(resolved: Mapping[str, Any], excluded: Iterable[str] = HASH_EXCLUDED) -> str:
    """Short stable hash of the resolved config without seed, device and machine-specific paths."""
    text = json.dumps(hashed_items(resolved, excluded), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# The dataset a run is ranked against when nothing says otherwise: real CIFAR-10 (the JPEG copy
# or torchvision's). Boards of other data (a class subset, generated images) come after its board.
REAL_CIFAR10 = ("cifar10-jpeg", "cifar10")
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
# Data config choices that name a loader, not a dataset: the dataset's name comes from its files.
_LOADER_CHOICES = {"folder", "cifar10", "synthetic"}


def _root_stem(root: Any) -> str:
    name = str(root or "").rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]
    for suffix in _ARCHIVE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def dataset_name(data: Mapping[str, Any], choice: str | None = None) -> str:
    """The name runs are keyed by: `cifar10-jpeg`, `cifar10`, `synthetic`, `cifar2`, ...

    From the data config (`_target_`, `root`, `classes`) and the `data` group choice. A class subset
    is another dataset: a named option (`data=cifar2`) gives its name, an ad-hoc subset is spelled
    out (`cifar10-jpeg[cat,dog]`). Rankings never mix names; the digest logged with the dataset
    input tells two copies under one name apart.
    """
    target = str(data.get("_target_") or "")
    if target.endswith("load_synthetic"):
        base = "synthetic"
    elif target.endswith("load_cifar10"):
        base = "cifar10"
    else:
        base = _root_stem(data.get("root")) or (choice or "data")
    classes = data.get("classes")
    if isinstance(classes, str):  # read back from a run's params, where lists are text
        classes = [c.strip(" '\"") for c in classes.strip("[]").split(",") if c.strip(" '\"")]
    if classes:
        if choice and choice not in _LOADER_CHOICES:
            return choice
        return f"{base}[{','.join(str(c) for c in classes)}]"
    return base


def is_real_cifar10(dataset: str | None) -> bool:
    return dataset in REAL_CIFAR10


def run_name(choices: Mapping[str, str | None], overrides: Iterable[str], dataset: str | None = None) -> str:
    """Readable name: the preset or model and optimizer, then the overrides that are not group picks.

    Data other than real CIFAR-10 leads the name (`[synthetic] logreg adam`): a 10-second demo and a
    real run must never look alike in a table.
    """
    head = [choices.get("experiment") or choices.get("model") or "run"]
    if not choices.get("experiment"):
        head.append(choices.get("optimizer") or "")
    if dataset and not is_real_cifar10(dataset):
        head.insert(0, f"[{dataset}]")
    groups = {"model", "optimizer", "schedule", "data", "experiment"}
    # Where the run is stored or resumed from says nothing about what it trains.
    plumbing = ("hydra", "tracking.", "paths.", "resume", "sweep.", "data.root", "data.cache_dir")
    rest = [o for o in overrides
            if o.split("=", 1)[0].lstrip("+~") not in groups and not o.lstrip("+~").startswith(plumbing)]
    return " ".join([h for h in head if h] + rest)[:250]
