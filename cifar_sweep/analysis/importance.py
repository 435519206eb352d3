"""A sweep at a glance: which parameters it swept, and how much each one mattered.

The swept parameters are the logged params whose values differ among the sweep's finished jobs
(numbers where every value parses as one, text otherwise). Their importance is Optuna's fANOVA
(`optuna.importance.FanovaImportanceEvaluator`) over an in-memory study made of those jobs, one
trial each, so it works for any sweep, a grid one included, not only for an Optuna search. Jobs a
pruner stopped early are left out: their accuracy is of fewer epochs than the others'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

METRIC = "best_val_acc"
# Logged params that are not settings a sweep chooses: what the data turned out to be, where it lives.
NOT_SWEPT = ("data.mean", "data.std", "data.root", "tracking.", "paths.", "hydra.")
LOG_SPAN = 10.0  # a positive range wider than this ratio is read (and drawn) on a log scale
MIN_TRIALS = 3


@dataclass
class SweptParams:
    """The sweep's finished jobs as a table: one row per job, a column per swept parameter."""

    values: pd.DataFrame  # run_id index; numeric columns are floats, text columns str
    metric: pd.Series  # the metric of each row
    numeric: list[str] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    left_out: dict[str, int] = field(default_factory=dict)  # why some jobs are not rows: count

    @property
    def names(self) -> list[str]:
        return [*self.numeric, *self.text]

    def log_scale(self, name: str) -> bool:
        column = self.values[name]
        return name in self.numeric and bool((column > 0).all()) and column.max() / column.min() > LOG_SPAN


def _parse_numbers(column: pd.Series) -> pd.Series | None:
    numbers = pd.to_numeric(column, errors="coerce")
    return numbers.astype(float) if numbers.notna().all() else None


def swept_params(runs: pd.DataFrame, metric: str = METRIC) -> SweptParams:
    """The finished, unpruned jobs of `runs` (the query frame: params.*, metrics.*, tags.* columns)."""
    status = runs["status"] if "status" in runs else pd.Series("FINISHED", index=runs.index)
    pruned = runs.get("tags.pruned", pd.Series(None, index=runs.index)).astype(str) == "true"
    value = pd.to_numeric(runs.get(f"metrics.{metric}", pd.Series(math.nan, index=runs.index)), errors="coerce")
    left_out = {"not FINISHED": int((status != "FINISHED").sum()),
                "pruned early": int(((status == "FINISHED") & pruned).sum()),
                f"no {metric}": int(((status == "FINISHED") & ~pruned & value.isna()).sum())}
    keep = (status == "FINISHED") & ~pruned & value.notna()
    jobs = runs[keep].set_index("run_id")
    numeric, text, columns = [], [], {}
    for col in sorted(c for c in jobs.columns if c.startswith("params.")):
        name = col[len("params."):]
        if name.startswith(NOT_SWEPT) or jobs[col].isna().any() or jobs[col].astype(str).nunique() < 2:
            continue
        numbers = _parse_numbers(jobs[col])
        if numbers is not None:
            numeric.append(name)
            columns[name] = numbers
        else:
            text.append(name)
            columns[name] = jobs[col].astype(str)
    frame = pd.DataFrame(columns, index=jobs.index)
    return SweptParams(frame, value[keep].set_axis(jobs.index), numeric, text,
                       {k: v for k, v in left_out.items() if v})


def distributions(swept: SweptParams) -> dict:
    """Optuna distributions that hold every value of each swept parameter."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out = {}
    for name in swept.numeric:
        column = swept.values[name]
        if (column == column.round()).all() and not swept.log_scale(name):
            out[name] = IntDistribution(int(column.min()), int(column.max()))
        else:
            out[name] = FloatDistribution(float(column.min()), float(column.max()), log=swept.log_scale(name))
    for name in swept.text:
        out[name] = CategoricalDistribution(sorted(swept.values[name].unique()))
    return out


def why_no_importance(swept: SweptParams) -> str | None:
    if not swept.names:
        return "no parameter differs among the sweep's finished jobs"
    if len(swept.values) < MIN_TRIALS:
        return f"{len(swept.values)} finished job(s); importance needs at least {MIN_TRIALS}"
    if swept.metric.nunique() < 2:
        return f"every finished job has the same {METRIC}"
    return None


def importances(swept: SweptParams, seed: int = 0) -> dict[str, float]:
    """fANOVA importance of each swept parameter (they sum to 1), largest first."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = distributions(swept)
    study = optuna.create_study(direction="maximize")
    for run_id, row in swept.values.iterrows():
        params = {name: (int(row[name]) if isinstance(dists[name], optuna.distributions.IntDistribution)
                         else float(row[name]) if name in swept.numeric else str(row[name]))
                  for name in swept.names}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists,
                                                  value=float(swept.metric[run_id]),
                                                  user_attrs={"run_id": run_id}))
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    return dict(optuna.importance.get_param_importances(study, evaluator=evaluator))
