"""Read runs and metric histories from MLflow into pandas: the one read path of the reporting commands.

Torch-free on purpose: the leaderboard, the device comparison and the HTML report must start fast
and work where torch is not installed. Runs become one row each, with MLflow's own column naming
(`metrics.X`, `params.X`, `tags.X`), so a frame from here looks like `mlflow.search_runs()` output.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from cifar_sweep.tracking import fast_sql
from cifar_sweep.tracking.fast_sql import HISTORY_COLUMNS
from cifar_sweep.tracking.store import StoreError

# The experiment the commands read unless told otherwise: the one training writes to by default.
DEFAULT_EXPERIMENT = "cifar_sweep"
RUN_COLUMNS = ["run_id", "run_name", "status", "experiment_id", "start_time", "end_time"]
# MLflow's SEARCH_MAX_RESULTS_THRESHOLD: the largest page a store accepts, so the fewest round trips.
PAGE_SIZE = 50_000
FINISHED = "FINISHED"


# -- experiments ----------------------------------------------------------------------------------


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
    fast = fast_sql.load_runs(client, exp_ids)
    return load_runs_paged(client, exp_ids) if fast is None else _finish_frame(fast)


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
    *,
    sweep_run_ids: Iterable[str] = (),
    data: str | None = None,
) -> pd.DataFrame:
    """Keep runs of one sweep (its sweep_id or its parent run's id; `sweep_run_ids`: more parents, and
    the runs a relaunch reused instead of training again), one model, one dataset and exact tags."""
    keep = pd.Series(True, index=runs.index)
    if sweep:
        ids = [sweep, *sweep_run_ids]
        keep &= ((column(runs, "tags.sweep_id", None) == sweep)
                 | column(runs, "tags.mlflow.parentRunId", None).isin(ids) | runs["run_id"].isin(ids))
    if model:
        keep &= column(runs, "tags.model", None) == model
    if data:
        keep &= dataset_column(runs) == data
    for key, value in (tags or {}).items():
        keep &= column(runs, f"tags.{key}", None) == value
    return runs[keep]


def dataset_column(runs: pd.DataFrame) -> pd.Series:
    """Each run's dataset name: its `dataset` tag, or for runs from before that tag the name its
    logged data params give (`data._target_`, `data.root`, `data.classes`, the `data` tag's choice)."""
    from cifar_sweep.config.identity import dataset_name

    tagged = column(runs, "tags.dataset", None)
    params = {key: column(runs, f"params.data.{key}", None) for key in ("_target_", "root", "classes")}
    choice = column(runs, "tags.data", None)
    known = pd.Series([None] * len(runs), index=runs.index, dtype=object)
    for i in runs.index:
        if isinstance(tagged[i], str) and tagged[i]:
            known[i] = tagged[i]
            continue
        data = {k: (v[i] if isinstance(v[i], str) and v[i] not in ("", "None") else None) for k, v in params.items()}
        has_choice = isinstance(choice[i], str) and bool(choice[i])
        if data["_target_"] is None and not has_choice:
            known[i] = ""  # another tool's run: no data recorded
            continue
        folder = choice[i] == "folder" or str(data["_target_"] or "").endswith("load_folder")
        if data["root"] is None and folder:
            data["root"] = "cifar10-jpeg.tar.gz"  # the folder option's default copy (no root recorded)
        if data["_target_"] is None and choice[i] in ("synthetic", "cifar10"):
            data["_target_"] = f"load_{choice[i]}"
        known[i] = dataset_name(data, choice[i] if has_choice else None)
    return known


def sweep_parent_rows(runs: pd.DataFrame, sweep: str) -> pd.DataFrame:
    """The parent run(s) `sweep` names: by run id, an unambiguous prefix of one, or the sweep_id."""
    parents = runs[column(runs, "tags.sweep_parent", None).astype(str).str.lower() == "true"]
    exact = parents[(parents["run_id"] == sweep) | (column(parents, "tags.sweep_id", None) == sweep)]
    if len(exact):
        return exact
    by_prefix = parents[parents["run_id"].astype(str).str.startswith(sweep)]
    return by_prefix if len(by_prefix) == 1 else by_prefix.iloc[0:0]


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
    if ids and keys:
        frame = fast_sql.load_histories(client, ids, keys)
        if frame is None:
            rows = [row for key in keys for row in _per_run_history(client, ids, key)]
            frame = pd.DataFrame(rows, columns=HISTORY_COLUMNS)
    # A resumed run may log a step twice: the later value is the one that counts.
    frame = frame.sort_values(["run_id", "key", "step", "timestamp"], kind="stable")
    return frame.drop_duplicates(["run_id", "key", "step"], keep="last").reset_index(drop=True)
