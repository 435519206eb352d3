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


def device_kind(device: Any) -> str:
    """`cuda:1` -> `cuda`, `cpu` -> `cpu`: what a checkpoint's generator state depends on."""
    return str(device).split(":")[0]


def run_setup(resolved: Mapping[str, Any], device: Any, precision: str | None = None) -> dict[str, str]:
    """How a config ran, beyond its config hash and seed: the kind of device, whether the model was
    compiled and the precision it computed in (resolved: `auto` is bf16, fp16 or fp32 on that device).

    Kept out of `config_hash`, so that one config on a CPU and on a GPU still pairs and its seeds
    still fold; but part of what the skip rule, resume and device pairing match on: a compiled run is
    not an eager run of the same config, and a GPU run's checkpoint cannot continue on a CPU.
    Values are text, as MLflow keeps params and tags (`trainer.compile` is logged as `True`/`False`).
    """
    trainer = resolved.get("trainer") or {}
    return {"device": device_kind(device), "compile": str(bool(trainer.get("compile", False))),
            "precision": str(precision or trainer.get("precision") or "auto")}


def setup_slug(setup: Mapping[str, str]) -> str:
    """`cuda-bf16`, `cpu-fp32-compiled`: a run setup as part of a folder name."""
    parts = [setup.get("device", "?"), setup.get("precision", "?")]
    return "-".join(parts + (["compiled"] if setup.get("compile") == "True" else []))


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


# Config groups: the name shows a pick as the option alone (`mlp`, `cosine`), never as `model=mlp`.
_NAME_GROUPS = ("experiment", "model", "optimizer", "schedule", "data")
# Where the run is stored or resumed from, what it logs and shows, say nothing about what it trains.
_NAME_PLUMBING = ("hydra", "tracking.", "paths.", "resume", "sweep.", "data.root", "data.cache_dir", "diagnostics.",
                  "trainer.progress", "trainer.log_every_n_steps")


# Overrides that change which dataset a run trains on: its name (`[synthetic[cat,dog]]`) shows them.
_NAME_DATASET_KEYS = ("data", "data.classes", "data.root")


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _short_number(text: str) -> str:
    """`0.00022671695326816903` -> `0.000227`: a float at 3 significant digits (what a table has room
    for; the params keep every digit). Integers and anything that is not a number stay as written."""
    body = text.strip().lstrip("+-")
    if not body or body.isdigit():
        return text
    try:
        value = float(text)
    except ValueError:
        return text
    return f"{value:.3g}" if value == value and abs(value) != float("inf") else text


def _short_value(value: str) -> str:
    if value.startswith("[") and value.endswith("]"):
        return "[" + ",".join(_short_number(v.strip()) for v in value[1:-1].split(",")) + "]"
    return _short_number(value)


def _named_overrides(overrides: Iterable[str]) -> dict[str, str]:
    """{key: `key=value` as the name shows it} for the overrides that are neither group picks nor
    plumbing. A key loses its group (`optimizer.lr` -> `lr`) unless another shown key ends the same."""
    kept = {}
    for override in overrides:
        key = _override_key(override)
        if key in _NAME_GROUPS or override.lstrip("+~").startswith(_NAME_PLUMBING):
            continue
        kept[key] = override.split("=", 1)[1] if "=" in override else ""
    tails = [key.rsplit(".", 1)[-1] for key in kept]
    return {key: f"{key if tails.count(key.rsplit('.', 1)[-1]) > 1 else key.rsplit('.', 1)[-1]}={_short_value(value)}"
            for key, value in kept.items()}


def run_name(choices: Mapping[str, str | None], overrides: Iterable[str], dataset: str | None = None,
             varying: Iterable[str] = ()) -> str:
    """Readable name, what tells the run apart first: `lr=0.000227 seed=1 [synthetic] logreg adam epochs=1`.

    `varying`: the keys that differ between the jobs of the run's sweep (`optimizer.lr`, `model`, ...);
    they lead, so that the members of a sweep differ within the first characters, where a table cuts
    names short. Then data other than real CIFAR-10 (`[synthetic]`: a 10-second demo and a real run
    must never look alike), the preset or model and optimizer, and the other overrides that are not
    group picks. Keys lose their group (`optimizer.lr` -> `lr`) and floats keep 3 significant digits:
    the name is for reading, the params keep the exact config.
    """
    overrides = list(overrides)
    varying = [key.lstrip("+~") for key in varying]
    named = _named_overrides(overrides)
    picks = {group: choices.get(group) or "" for group in _NAME_GROUPS}
    # A sweep over the data leads with the dataset's own name, real CIFAR-10 too.
    marked = dataset and (any(key in _NAME_DATASET_KEYS for key in varying) or not is_real_cifar10(dataset))
    if marked and dataset.endswith("]"):
        named.pop("data.classes", None)  # `[synthetic[cat,dog]]` says it already
    lead = [picks[key] if key in _NAME_GROUPS else named.pop(key, "") for key in dict.fromkeys(varying)
            if key not in _NAME_DATASET_KEYS]
    head = [picks[key] for key in (("experiment",) if picks["experiment"] else ("model", "optimizer"))
            if key not in varying]
    parts = lead + ([f"[{dataset}]"] if marked else []) + head + list(named.values())
    if not any(parts):
        parts = ["run"]
    return " ".join(p for p in parts if p)[:250]
