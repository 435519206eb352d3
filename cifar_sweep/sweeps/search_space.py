"""What an Optuna sweep searches: Hydra's sweep overrides read as Optuna distributions.

`a,b,c` / choice() -> categorical, range() -> integers (categorical for a float range), interval()
-> float (integer when both ends are), tag(log, ...) -> log scale. Plain overrides are fixed for
every trial. Optuna is imported only when a search is built: Hydra imports the sweeper plugin,
and with it this module, at every start-up.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser

from cifar_sweep.errors import CifarSweepError

# Overrides that change how a sweep runs, not what it searches: they do not rename the study.
NOT_IN_SEARCH = ("sweep.dry_run", "sweep.force")
SUPPORTED = "use a,b,c / choice() / range() / interval() / tag(log, interval())"


class SearchSpaceError(CifarSweepError, ValueError):
    """A sweep override the Optuna sweeper cannot search, or no search space at all."""


@dataclass
class Search:
    """The space, the overrides fixed for every trial, and the text of both (which names the study)."""

    space: dict[str, Any] = field(default_factory=dict)
    fixed: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.lines).encode()).hexdigest()[:10]

    def trial_overrides(self, params: Mapping[str, Any]) -> list[str]:
        """The command line of one trial: the fixed overrides, then its drawn parameters."""
        return self.fixed + [override_text(k, v) for k, v in params.items()]

    def probes(self) -> list[list[str]]:
        """Trials that between them use every choice and both ends of every range (each with the other
        parameters at their first value): composed before the search, they find a bad key or value."""
        base = {k: _ends(v)[0] for k, v in self.space.items()}
        probes, seen = [], set()
        for key, dist in self.space.items():
            for value in _ends(dist):
                overrides = self.trial_overrides({**base, key: value})
                if tuple(overrides) not in seen:
                    seen.add(tuple(overrides))
                    probes.append(overrides)
        return probes


def parse_search(params: Mapping[str, str], arguments: Sequence[str], config_loader: Any) -> Search:
    """The search of config `params` and command-line sweeps; a SearchSpaceError names what cannot be searched."""
    parser = OverridesParser.create(config_loader=config_loader)
    merged = {k: f"{k}={v}" for k, v in params.items()}
    for override in parser.parse_overrides(list(arguments)):
        merged[override.get_key_element()] = override.input_line
    search = Search()
    for override in parser.parse_overrides(list(merged.values())):
        key = override.get_key_element()
        if override.is_sweep_override():
            search.space[key] = distribution(key, override.value())
            search.lines.append(f"search {override.input_line}")
        else:
            search.fixed.append(f"{key}={override.get_value_element_as_str()}")
            if not key.lstrip("+~").startswith(NOT_IN_SEARCH):
                search.lines.append(f"fixed {search.fixed[-1]}")
    search.lines.sort()
    if not search.space:
        raise SearchSpaceError("the optuna sweeper needs a search space: hydra.sweeper.params or sweep overrides "
                               "such as 'optimizer.lr=tag(log, interval(1e-4, 1e-1))' model=logreg,cnn_simple")
    return search


def distribution(key: str, sweep: Any) -> Any:
    """A Hydra sweep override (choice / range / interval, optionally tagged `log`) as an Optuna distribution."""
    import optuna.distributions as d
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    if not isinstance(sweep, (ChoiceSweep, RangeSweep, IntervalSweep)):  # glob(), or anything new
        raise SearchSpaceError(f"{key}: unsupported sweep {sweep!r} for the optuna sweeper; {SUPPORTED}")
    log_scale = "log" in (sweep.tags or set())
    if isinstance(sweep, ChoiceSweep):
        return d.CategoricalDistribution([_plain(v) for v in sweep.list])
    if isinstance(sweep, RangeSweep):
        return _range_distribution(key, sweep, log_scale)
    if isinstance(sweep.start, int) and isinstance(sweep.end, int):
        return d.IntDistribution(sweep.start, sweep.end, log=log_scale)
    return d.FloatDistribution(float(sweep.start), float(sweep.end), log=log_scale)


def _range_distribution(key: str, sweep: Any, log_scale: bool) -> Any:
    import optuna.distributions as d

    values = list(sweep.range())
    if not values:
        raise SearchSpaceError(f"{key}: range({sweep.start}, {sweep.stop}, {sweep.step}) is empty")
    if all(isinstance(v, int) for v in (sweep.start, sweep.stop, sweep.step)):
        # Optuna's integer range runs upwards; a descending range() is the same set of values.
        return d.IntDistribution(min(values), max(values), step=abs(sweep.step), log=log_scale)
    return d.CategoricalDistribution(values)


def grid_points(space: Mapping[str, Any]) -> dict[str, list[Any]]:
    """GridSampler's `search_space` from the sweep's: every value of each choice and integer range."""
    import optuna.distributions as d

    grid = {}
    for key, dist in space.items():
        if isinstance(dist, d.CategoricalDistribution):
            grid[key] = list(dist.choices)
        elif isinstance(dist, d.IntDistribution):
            grid[key] = list(range(dist.low, dist.high + 1, dist.step))
        else:
            raise SearchSpaceError(f"{key}: GridSampler needs a finite grid; give the values as a,b,c or range(), "
                                   "not interval()")
    return grid


def override_text(key: str, value: Any) -> str:
    """`key=value` as Hydra parses it back to the same value (quoted where its grammar needs it)."""
    if isinstance(value, float):
        return f"{key}={value!r}"
    if isinstance(value, str) and any(c in value for c in " ,()[]{}'\"=:"):
        return f"{key}='{value}'"
    return f"{key}={value}"


def _ends(dist: Any) -> list[Any]:
    import optuna.distributions as d

    return list(dist.choices) if isinstance(dist, d.CategoricalDistribution) else [dist.low, dist.high]


def _plain(value: Any) -> Any:
    return value if isinstance(value, (int, float, str, bool)) or value is None else str(value)
