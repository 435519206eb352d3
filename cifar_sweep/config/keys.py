"""Every key the typed config has, and the closest ones to a key that is not there.

A mistyped key is the most common first-hour mistake. Hydra's own answer to `trainer.epoch=2` is
"use +trainer.epoch=2", which the schema then refuses; the answer a user needs is the key they
meant. The typed blocks' keys come from the schemas (`config.schema`), so the check runs on the
command line alone, before Hydra composes anything. The `_target_` groups (model, optimizer,
schedule) take their builders' keyword arguments, which only the chosen option knows: they are
left to Hydra.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable
from functools import cache

from cifar_sweep.config import schema

OPEN_GROUPS = ("model", "optimizer", "schedule")
GROUPS = (*OPEN_GROUPS, "data", "experiment")


def _fields(node: type, prefix: str) -> set[str]:
    keys = set()
    for f in dataclasses.fields(node):
        key = f"{prefix}{f.name}"
        keys.add(key)
        kind = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(kind):
            keys |= _fields(kind, key + ".")
    return keys


@cache
def known_keys() -> frozenset[str]:
    """Dotted keys of the typed config, every data option's keys included."""
    keys = _fields(schema.Train, "") | set(GROUPS)
    for data in schema.DATA_SCHEMAS.values():
        keys |= _fields(data, "data.")
    return frozenset(keys)


def is_checked(key: str) -> bool:
    """Keys the schemas know all of: anything but the open builder groups and Hydra's own."""
    top = key.split(".")[0]
    return "/" not in key and top != "hydra" and top not in OPEN_GROUPS


def _leaves() -> list[str]:
    keys = known_keys()
    return sorted(k for k in keys if not any(other.startswith(k + ".") for other in keys))


def did_you_mean(key: str, n: int = 2) -> list[str]:
    """The known keys closest to `key`, by the whole key or by its last part alone (`epochs=3` ->
    trainer.epochs); only those about as close as the best."""
    leaf = key.rsplit(".", 1)[-1]
    scored = []
    for known in _leaves():
        whole = difflib.SequenceMatcher(None, key, known).ratio()
        part = difflib.SequenceMatcher(None, leaf, known.rsplit(".", 1)[-1]).ratio()
        scored.append((max(whole, part), known))
    scored.sort(key=lambda s: -s[0])
    best = scored[0][0] if scored else 0.0
    return [k for score, k in scored[:n] if score >= max(0.75, best - 0.05)]


def unknown_key_message(key: str) -> str:
    close = did_you_mean(key)
    hint = f"did you mean {' or '.join(close)}?" if close else "`cifar-sweep --cfg job` lists the keys"
    return f"{key} is not a config key; {hint}"


def unknown_override_keys(overrides: Iterable[str]) -> list[str]:
    """Keys of command-line overrides (`key=value`, `+key=value`, `++key=value`) that the typed
    config does not have. Overrides Hydra's grammar rejects are left for Hydra to report."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    texts = [o for o in overrides if "=" in o and not o.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(texts)
    except Exception:
        return []
    return [o.key_or_group for o in parsed
            if not o.is_delete() and is_checked(o.key_or_group) and o.key_or_group not in known_keys()]
