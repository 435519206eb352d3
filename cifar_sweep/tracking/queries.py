"""Read runs and metric histories from MLflow into pandas: the one read path of the reporting commands.

Torch-free on purpose: the leaderboard, the device comparison and the HTML report must start fast
and work where torch is not installed. Runs become one row each, with MLflow's own column naming
(`metrics.X`, `params.X`, `tags.X`), so a frame from here looks like `mlflow.search_runs()` output.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from cifar_sweep.config.paths import default_tracking_uri

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "cifar_sweep"
RUN_COLUMNS = ["run_id", "run_name", "status", "experiment_id", "start_time", "end_time"]
# Set to force the public search_runs path (debugging, or a store whose schema we misread).
NO_FAST_PATH_ENV = "CIFAR_SWEEP_NO_FAST_RUNS"
# MLflow's SEARCH_MAX_RESULTS_THRESHOLD: the largest page a store accepts, so the fewest round trips.
PAGE_SIZE = 50_000
# Run ids per bulk history query: well under SQLite's bound-parameter limit.
HISTORY_CHUNK = 500
WARMUP_EPOCH = 0
FINISHED = "FINISHED"


class StoreError(RuntimeError):
    """A problem the user must fix (no store, unknown experiment, nothing matches): printed, not traced."""


# -- store and experiment -------------------------------------------------------------------------


def sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def make_client(tracking_uri: str | None = None) -> tuple[MlflowClient, str]:
    """Client on the given store (default: the project's); refuse to invent an empty SQLite store.

    Opening a missing SQLite file would silently create a fresh database (and take seconds of
    migrations) only to report "no runs"; saying where we looked is more useful.
    """
    uri = tracking_uri or default_tracking_uri()
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise StoreError(
            f"no MLflow store at {db}: train something first (cifar-sweep) or pass --tracking-uri"
        )
    return MlflowClient(tracking_uri=uri), uri


def experiment_ids(client: MlflowClient, names: Sequence[str]) -> list[str]:
    """Ids of the named experiments; an unknown name is an error that lists the known ones."""
    ids = []
    for name in names:
        found = client.get_experiment_by_name(name)
        if found is None:
            known = sorted(e.name for e in client.search_experiments(view_type=ViewType.ALL))
            raise StoreError(
                f"no experiment named {name!r} in this store; known experiments: "
                + (", ".join(repr(k) for k in known) or "(none)")
            )
        ids.append(found.experiment_id)
    return ids


# -- runs -----------------------------------------------------------------------------------------


def _run_row(run) -> dict:
    info, data = run.info, run.data
    row = {
        "run_id": info.run_id,
        "run_name": info.run_name or "",
        "status": info.status,
        "experiment_id": info.experiment_id,
        "start_time": info.start_time,
        "end_time": info.end_time,
    }
    row.update({f"metrics.{k}": v for k, v in data.metrics.items()})
    row.update({f"params.{k}": v for k, v in data.params.items()})
    row.update({f"tags.{k}": v for k, v in data.tags.items()})
    return row


def load_runs(client: MlflowClient, exp_ids: Sequence[str]) -> pd.DataFrame:
    """Every active run of the experiments, one row each.

    Metric columns hold MLflow's latest value (the summary metrics are logged once, so latest = final).
    """
    store = _sql_store(client)
    if store is not None:
        try:
            return _load_runs_sql(store, exp_ids)
        except Exception as error:  # a schema this code does not know: the public API still works
            log.warning("fast run loading failed (%s); falling back to MlflowClient.search_runs", error)
    return load_runs_paged(client, exp_ids)


def load_runs_paged(client: MlflowClient, exp_ids: Sequence[str]) -> pd.DataFrame:
    """The public-API path: search_runs, paging with the largest page the store accepts."""
    rows: list[dict] = []
    token = None
    while True:
        page = client.search_runs(
            list(exp_ids), run_view_type=ViewType.ACTIVE_ONLY, max_results=PAGE_SIZE, page_token=token
        )
        rows.extend(_run_row(r) for r in page)
        token = page.token
        if not token:
            break
    return _finish_frame(pd.DataFrame(rows))


def _sql_store(client: MlflowClient):
    """The SQLAlchemy store behind the client (SQLite, PostgreSQL, MySQL), or None (REST server)."""
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    if os.environ.get(NO_FAST_PATH_ENV) or not hasattr(store, "engine"):
        return None
    return store


def _load_runs_sql(store, exp_ids: Sequence[str]) -> pd.DataFrame:
    """Same frame as `load_runs_paged`, read with four set queries on MLflow's own table definitions.

    MLflow's search builds an ORM object per param, tag and metric (50,000 objects for 1,000 runs:
    about 2 s here); four flat queries into pandas take a tenth of that. The tables are named through
    MLflow's own SQLAlchemy models, and a test checks both paths give the same frame.
    """
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
    metrics = parts["metrics"]
    # MLflow stores NaN as value 0 with is_nan set (not every database keeps NaN).
    metrics["value"] = metrics["value"].astype(float).where(~metrics["is_nan"].astype(bool), math.nan)
    for prefix, part in parts.items():
        if part.empty:
            continue
        wide = part.pivot(index="run_uuid", columns="key", values="value")
        wide.columns = [f"{prefix}.{k}" for k in wide.columns]
        frame = frame.join(wide, on="run_id")
    return _finish_frame(frame)


def _finish_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Both load paths end here: fixed leading columns, newest run first (MLflow's default order)."""
    if frame.empty:
        return pd.DataFrame(columns=RUN_COLUMNS)
    frame["run_name"] = frame["run_name"].fillna("")
    frame = frame.sort_values(["start_time", "run_id"], ascending=[False, True], kind="stable")
    rest = sorted(c for c in frame.columns if c not in RUN_COLUMNS)
    return frame[RUN_COLUMNS + rest].reset_index(drop=True)


def column(frame: pd.DataFrame, name: str, default=math.nan) -> pd.Series:
    """A column that may not exist in a messy store (no run logged that key) as a full Series."""
    if name in frame.columns:
        return frame[name]
    return pd.Series([default] * len(frame), index=frame.index, dtype=object if default is None else None)


def drop_sweep_parents(runs: pd.DataFrame) -> pd.DataFrame:
    """Sweep parent runs hold no training metrics: they never belong in a ranking."""
    parent = column(runs, "tags.sweep_parent", None).astype(str).str.lower() == "true"
    return runs[~parent]


def filter_runs(
    runs: pd.DataFrame,
    sweep: str | None = None,
    model: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Keep runs of one sweep (its sweep_id or its parent run's id), one model, and exact tag values."""
    keep = pd.Series(True, index=runs.index)
    if sweep:
        keep &= (column(runs, "tags.sweep_id", None) == sweep) | (
            column(runs, "tags.mlflow.parentRunId", None) == sweep
        )
    if model:
        keep &= column(runs, "tags.model", None) == model
    for key, value in (tags or {}).items():
        keep &= column(runs, f"tags.{key}", None) == value
    return runs[keep]


def parse_tag_filters(items: Iterable[str]) -> dict[str, str]:
    tags = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise StoreError(f"--tag wants KEY=VALUE, got {item!r}")
        tags[key.strip()] = value
    return tags


# -- artifacts ----------------------------------------------------------------------------------


def download_artifact(client: MlflowClient, run_id: str, path: str, dst: str) -> str:
    """Local copy of one artifact, without MLflow's progress bar (noise on stderr, once per file)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return client.download_artifacts(run_id, path, dst)


# -- metric histories -----------------------------------------------------------------------------

HISTORY_COLUMNS = ["run_id", "key", "step", "value", "timestamp"]


def _histories_sql(store, run_ids: list[str], keys: list[str]) -> pd.DataFrame:
    """All (run, key) histories in one flat query per chunk of runs (see `_load_runs_sql` for why)."""
    import sqlalchemy as sa
    from mlflow.store.tracking.dbmodels.models import SqlMetric

    t = SqlMetric.__table__
    parts = []
    with store.engine.connect() as conn:
        for i in range(0, len(run_ids), HISTORY_CHUNK):
            query = sa.select(
                t.c.run_uuid.label("run_id"), t.c.key, t.c.step, t.c.value, t.c.timestamp, t.c.is_nan
            ).where(t.c.run_uuid.in_(run_ids[i:i + HISTORY_CHUNK]), t.c.key.in_(keys))
            parts.append(pd.read_sql(query, conn))
    frame = pd.concat(parts, ignore_index=True)
    frame["value"] = frame["value"].astype(float).where(~frame["is_nan"].astype(bool), math.nan)
    return frame[HISTORY_COLUMNS]


def _per_run_history(client: MlflowClient, run_ids: list[str], key: str) -> list[tuple]:
    def one(run_id):
        return [(run_id, key, m.step, m.value, m.timestamp) for m in client.get_metric_history(run_id, key)]

    # A few threads hide a tracking server's latency; the client is safe to share for reads.
    with ThreadPoolExecutor(max_workers=8) as pool:
        return [row for rows in pool.map(one, run_ids) for row in rows]


def load_histories(client: MlflowClient, run_ids: Iterable[str], keys: Iterable[str]) -> pd.DataFrame:
    """Long frame run_id, key, step, value, timestamp; one value per (run, key, step), the last logged."""
    ids, keys = list(dict.fromkeys(run_ids)), list(keys)
    frame = pd.DataFrame(columns=HISTORY_COLUMNS)
    store = _sql_store(client)
    if ids and store is not None:
        try:
            frame = _histories_sql(store, ids, keys)
        except Exception as error:  # see load_runs
            log.warning("fast history loading failed (%s); falling back to get_metric_history", error)
            store = None
    if ids and store is None:
        rows = [row for key in keys for row in _per_run_history(client, ids, key)]
        frame = pd.DataFrame(rows, columns=HISTORY_COLUMNS)
    # A resumed run may log a step twice: the later value is the one that counts.
    frame = frame.sort_values(["run_id", "key", "step", "timestamp"], kind="stable")
    return frame.drop_duplicates(["run_id", "key", "step"], keep="last").reset_index(drop=True)


def curve(histories: pd.DataFrame, key: str) -> pd.DataFrame:
    """Wide frame: one row per (run_id, step), for one key."""
    part = histories[histories["key"] == key]
    return part[["run_id", "step", "value"]].rename(columns={"value": key})


def mean_excluding_warmup(histories: pd.DataFrame, key: str) -> pd.Series:
    """Per-run mean of a per-epoch metric, leaving out the warm-up epoch 0 when there are >= 2 epochs.

    Epoch 0 pays for allocator growth, cuDNN/oneDNN autotuning and compilation; averaging it in
    would make short runs look slower than the device is.
    """
    part = curve(histories, key)
    epochs = part.groupby("run_id")["step"].transform("size")
    kept = part[(epochs < 2) | (part["step"] != WARMUP_EPOCH)]
    return kept.groupby("run_id")[key].mean()


def time_to_target(histories: pd.DataFrame, target: float, metric: str = "val_acc") -> pd.DataFrame:
    """Per run: first epoch whose `metric` reached `target`, and elapsed_s at that epoch (NaN: never)."""
    acc = curve(histories, metric)
    hit = acc[acc[metric] >= target].sort_values(["run_id", "step"]).drop_duplicates("run_id")
    elapsed = curve(histories, "elapsed_s")
    hit = hit.merge(elapsed, on=["run_id", "step"], how="left")
    out = hit.set_index("run_id")[["step", "elapsed_s"]].rename(
        columns={"step": "target_epoch", "elapsed_s": "target_time_s"}
    )
    return out.astype(float)


def add_run_filters(parser: argparse.ArgumentParser, sweep: bool = True, tags: bool = True) -> None:
    """The store and run filters every reporting command shares, with one wording."""
    parser.add_argument("--tracking-uri", help="MLflow store (default: sqlite:///<project>/runs/mlflow.db)")
    parser.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="experiment name (default: %(default)s)")
    if sweep:
        parser.add_argument("--sweep", help="only runs of this sweep: its sweep_id tag or its parent run id")
    parser.add_argument("--model", help="only runs of this model (the model tag, e.g. cnn_simple)")
    if tags:
        parser.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE",
                            help="only runs with this tag value (repeatable)")
