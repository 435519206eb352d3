"""A fast read of runs and histories straight from MLflow's SQL tables: quarantined here.

MLflow's search builds an ORM object per param, tag and metric (50,000 objects for 1,000 runs:
about 2 s here); a few flat queries into pandas take a tenth of that. The tables are private to
MLflow, so this module is the only one that knows them, names them through MLflow's own SQLAlchemy
models, runs only on the MLflow versions it was checked against, and answers None whenever it
cannot be sure: callers then take the public `search_runs` / `get_metric_history` path, and a test
checks both paths give the same frames on the same store.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence

import pandas as pd
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

# Set to force the public path (debugging, or a store whose schema we misread).
NO_FAST_PATH_ENV = "CIFAR_SWEEP_NO_FAST_RUNS"
# The MLflow minor versions whose tables this module was checked against (major, minor).
TESTED_MLFLOW = ((3, 17),)
# Run ids per bulk query: well under SQLite's bound-parameter limit.
CHUNK = 500
HISTORY_COLUMNS = ["run_id", "key", "step", "value", "timestamp"]


def _tested_version() -> bool:
    import mlflow

    try:
        major, minor = (int(p) for p in mlflow.__version__.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) in TESTED_MLFLOW


def sql_store(client: MlflowClient):
    """The SQLAlchemy store behind the client (SQLite, PostgreSQL, MySQL), or None (REST server,
    an untested MLflow, or the fast path switched off)."""
    if os.environ.get(NO_FAST_PATH_ENV) or not _tested_version():
        return None
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    return store if hasattr(store, "engine") else None


def load_runs(client: MlflowClient, exp_ids: Sequence[str]) -> pd.DataFrame | None:
    """The active runs as one raw row each (MLflow's column naming), or None: use the public path.

    The frame is not yet ordered: the caller finishes it the same way as the public path's.
    """
    store = sql_store(client)
    if store is None:
        return None
    try:
        return _load_runs(store, exp_ids)
    except Exception as error:  # a schema this code does not know: the public API still works
        log.warning("fast run loading failed (%s); falling back to MlflowClient.search_runs", error)
        return None


def load_histories(client: MlflowClient, run_ids: list[str], keys: list[str]) -> pd.DataFrame | None:
    """Every (run, key) history in a long frame (HISTORY_COLUMNS, duplicates kept), or None."""
    store = sql_store(client)
    if store is None:
        return None
    try:
        return _histories(store, run_ids, keys)
    except Exception as error:  # see load_runs
        log.warning("fast history loading failed (%s); falling back to get_metric_history", error)
        return None


def _nan_aware(part: pd.DataFrame) -> pd.Series:
    # MLflow stores NaN as value 0 with is_nan set (not every database keeps NaN).
    return part["value"].astype(float).where(~part["is_nan"].astype(bool), math.nan)


def _load_runs(store, exp_ids: Sequence[str]) -> pd.DataFrame:
    import sqlalchemy as sa
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlParam, SqlRun, SqlTag

    runs_t = SqlRun.__table__
    wanted = sa.select(runs_t.c.run_uuid).where(
        runs_t.c.experiment_id.in_([int(e) for e in exp_ids]), runs_t.c.lifecycle_stage == "active"
    )
    with store.engine.connect() as conn:
        runs = pd.read_sql(
            sa.select(runs_t.c.run_uuid, runs_t.c.name, runs_t.c.status, runs_t.c.experiment_id,
                      runs_t.c.start_time, runs_t.c.end_time).where(runs_t.c.run_uuid.in_(wanted)),
            conn,
        )
        parts = {}
        for prefix, model in (("metrics", SqlLatestMetric), ("params", SqlParam), ("tags", SqlTag)):
            table = model.__table__
            cols = [table.c.run_uuid, table.c.key, table.c.value]
            if prefix == "metrics":
                cols.append(table.c.is_nan)
            parts[prefix] = pd.read_sql(sa.select(*cols).where(table.c.run_uuid.in_(wanted)), conn)
    frame = runs.rename(columns={"run_uuid": "run_id", "name": "run_name"})
    frame["experiment_id"] = frame["experiment_id"].astype(str)
    parts["metrics"]["value"] = _nan_aware(parts["metrics"])
    for prefix, part in parts.items():
        if part.empty:
            continue
        wide = part.pivot(index="run_uuid", columns="key", values="value")
        wide.columns = [f"{prefix}.{k}" for k in wide.columns]
        frame = frame.join(wide, on="run_id")
    return frame


def _histories(store, run_ids: list[str], keys: list[str]) -> pd.DataFrame:
    import sqlalchemy as sa
    from mlflow.store.tracking.dbmodels.models import SqlMetric

    t = SqlMetric.__table__
    parts = []
    with store.engine.connect() as conn:
        for i in range(0, len(run_ids), CHUNK):
            query = sa.select(
                t.c.run_uuid.label("run_id"), t.c.key, t.c.step, t.c.value, t.c.timestamp, t.c.is_nan
            ).where(t.c.run_uuid.in_(run_ids[i:i + CHUNK]), t.c.key.in_(keys))
            parts.append(pd.read_sql(query, conn))
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=HISTORY_COLUMNS + ["is_nan"])
    frame["value"] = _nan_aware(frame)
    return frame[HISTORY_COLUMNS]
