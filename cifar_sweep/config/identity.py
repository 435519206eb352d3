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


def run_name(choices: Mapping[str, str | None], overrides: Iterable[str]) -> str:
    """Readable name: the preset or model and optimizer, then the overrides that are not group picks."""
    head = [choices.get("experiment") or choices.get("model") or "run"]
    if not choices.get("experiment"):
        head.append(choices.get("optimizer") or "")
    groups = {"model", "optimizer", "schedule", "data", "experiment"}
    # Where the run is stored or resumed from says nothing about what it trains.
    plumbing = ("hydra", "tracking.", "paths.", "resume", "sweep.", "data.root", "data.cache_dir")
    rest = [o for o in overrides
            if o.split("=", 1)[0].lstrip("+~") not in groups and not o.lstrip("+~").startswith(plumbing)]
    return " ".join([h for h in head if h] + rest)[:250]
