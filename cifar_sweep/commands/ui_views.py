"""What `cifar-ui` stores on an experiment and links to: the saved leaderboard views (one per dataset
and one of every run), the experiment it opens, and the page links, all through the tracking
server's REST API. The server itself (start, health, stop) is `commands/ui.py`."""

from __future__ import annotations

import json
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from urllib.parse import quote

import pandas as pd

from cifar_sweep.analysis.importance import swept_params
from cifar_sweep.analysis.ranking import dataset_order
from cifar_sweep.tracking.queries import DEFAULT_EXPERIMENT
from cifar_sweep.tracking.store import EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND, needs_kind_tag

VIEW_KEY = "cifar_leaderboard"  # `cifar_leaderboard.<dataset>`: one leaderboard per dataset
ALL_RUNS_KEY = "cifar_all_runs"  # every run, any status, newest first, grouped by dataset
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
VIEW_NAME = "Leaderboard"  # the UI's "Saved views" menu lists the views by name: "Leaderboard: cifar10-jpeg"
ALL_RUNS_NAME = "All runs, newest first"
RANK_METRIC = "best_val_acc"
CHART_SECTIONS = ("Model metrics", "class_acc", "class_ap", "System metrics")
DATASET_TAG = "dataset"  # training tags each run with its dataset's name: one view per dataset
SWEEP_TAG = "sweep"  # and each job of a sweep with the sweep's short name: a column of the views
RUN_NAME_COLUMN = "attributes.`Run Name`"
CREATED_COLUMN = "runDateAndNestInfo"
# Pixels: a run name leads with what tells it apart, and 260 show about 32 characters of it (the
# UI's default, 190, about 22); a sweep's name (`12-04 03:41:07`) whole; "Created" ("9 minutes ago")
# no wider than it needs, so that the ranking's columns fit beside MLflow's assistant panel.
COLUMN_WIDTHS = {RUN_NAME_COLUMN: 260, CREATED_COLUMN: 135, "tags.`sweep`": 120}
# Column ids as the runs table names them, <attributes|metrics|params|tags>.`<key>`, in the order
# shown: the table draws only the columns that fit the window (an assistant panel takes a third of
# a laptop screen on a first visit), so the ranking's own columns and the sweep come first.
LEADERBOARD_COLUMNS = (
    "tags.`model`", "metrics.`best_val_acc`", "metrics.`test_acc`", f"tags.`{SWEEP_TAG}`", "tags.`optimizer`",
    "params.`optimizer.lr`", "tags.`schedule`", "params.`trainer.epochs`", "metrics.`train_time_s`", "tags.`device`",
    "attributes.`Dataset`",
    # Written by `cifar-leaderboard --tag-runs`: whether a run's lead over the next is real; empty otherwise.
    "tags.`within_noise_of_leader`", "tags.`val_acc_ci95`",
)
FINISHED_ONLY = "attributes.status = 'FINISHED'"
# The chart view's parallel-coordinates card (the UI's compare-runs chart of type PARALLEL) in each
# dataset's leaderboard: the numeric params that differ among its runs against the ranking metric.
# Numbers only: the UI refuses a text param's axis while runs are grouped (a user may group them),
# and a number's axis keeps its order. Only runs that have every axis are drawn: a few axes show
# the most runs.
PARALLEL_CHART_UUID = "cifar-parallel-coordinates"
# Its own section, first in the chart view, one card the width of the pane (the UI's section keys
# `columns` and `cardHeight`; 3 cards of 360 px a row otherwise, where 4+ axes crowd each other).
GLANCE_SECTION = {"uuid": "cifar-sweep-at-a-glance", "name": "Swept parameters", "display": True,
                  "isReordered": False, "columns": 1, "cardHeight": 440}
PARALLEL_MAX_PARAMS = 6
MACHINE_LEARNING = "workflowType=machine_learning"  # the model-training layout, not the GenAI one
# uvicorn (what `mlflow server` runs) without its per-request access log; MLflow's own INFO lines off.

def _get(url: str, path: str, query: dict[str, str] | None = None) -> dict | None:
    """GET <url>/api/2.0/mlflow/<path> as JSON; None when nothing (or an error) answers."""
    suffix = f"?{urllib.parse.urlencode(query)}" if query else ""
    try:
        with urllib.request.urlopen(f"{url}/api/2.0/mlflow/{path}{suffix}", timeout=30) as resp:
            return json.load(resp)
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _post(url: str, path: str, body: dict) -> dict:
    """POST a JSON body to <url>/api/2.0/mlflow/<path>; URLError/OSError when the server refuses."""
    request = urllib.request.Request(f"{url}/api/2.0/mlflow/{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.load(resp)


def _experiment(url: str, name: str) -> dict | None:
    found = _get(url, "experiments/get-by-name", {"experiment_name": name})
    return found.get("experiment") if found else None


def experiment_id(url: str, name: str) -> str | None:
    """The id of experiment `name` on the running server (REST), or None if it has none yet."""
    found = _experiment(url, name)
    return found["experiment_id"] if found else None


def _search_runs(url: str, exp_ids: list[str], filter_string: str = "", order_by: tuple[str, ...] = (),
                 max_results: int = 1000, pages: int | None = None):
    """The runs a search finds, page after page (at most `pages`)."""
    token = None
    while pages is None or pages > 0:
        body = {"experiment_ids": exp_ids, "filter": filter_string, "order_by": list(order_by),
                "max_results": max_results, **({"page_token": token} if token else {})}
        found = _post(url, "runs/search", body)
        yield from found.get("runs", [])
        token, pages = found.get("next_page_token"), None if pages is None else pages - 1
        if not token:
            return


def _tags(entity: dict) -> dict[str, str]:
    return {t["key"]: t.get("value", "") for t in entity.get("tags", [])}


def choose_experiment(url: str, wanted: str | None) -> tuple[dict | None, str]:
    """The experiment to open and, when it is not the one asked for (or there is none), a line why.

    `wanted` None: the project's default experiment; in a store without one (runs filed under
    another `tracking.experiment`), the experiment of the latest run, or the only one there is.
    """
    found = _experiment(url, wanted or DEFAULT_EXPERIMENT)
    if found is not None:
        return found, ""
    listed = (_get(url, "experiments/search", {"max_results": "1000"}) or {}).get("experiments", [])
    names = ", ".join(repr(e["name"]) for e in listed) or "(none)"
    if wanted is not None:
        return None, f"no experiment {wanted!r} in this store; experiments here: {names}"
    ids = [e["experiment_id"] for e in listed]
    try:
        latest = next(_search_runs(url, ids, order_by=("attributes.start_time DESC",), max_results=1, pages=1), None)
    except (urllib.error.URLError, OSError, ValueError):
        latest = None
    if latest is not None:
        found = next(e for e in listed if e["experiment_id"] == latest["info"]["experiment_id"])
        why = "the one with the latest run"
    else:
        named = [e for e in listed if e["experiment_id"] != "0"]  # "Default" is MLflow's own, empty here
        if len(named) != 1:
            return None, f"no experiment {DEFAULT_EXPERIMENT!r} in this store yet; experiments here: {names}"
        found, why = named[0], "the only one"
    return found, (f"no experiment {DEFAULT_EXPERIMENT!r} in this store: showing {found['name']!r}, {why} "
                   f"(experiments here: {names}; --experiment NAME picks one)")


def dataset_of(run: dict) -> str | None:
    """The dataset a REST run was trained on (its `dataset` tag)."""
    return _tags(run.get("data", {})).get(DATASET_TAG)


def _runs_frame(runs: list[dict]) -> pd.DataFrame:
    """REST runs as the query frame `analysis` reads (run_id, status, params.*, metrics.*, tags.*)."""
    rows = []
    for run in runs:
        data = run.get("data", {})
        rows.append({"run_id": run["info"]["run_id"], "status": run["info"].get("status"),
                     **{f"params.{p['key']}": p.get("value") for p in data.get("params", [])},
                     **{f"metrics.{m['key']}": m.get("value") for m in data.get("metrics", [])},
                     **{f"tags.{k}": v for k, v in _tags(data).items()}})
    return pd.DataFrame(rows, columns=["run_id", "status"] if not rows else None)


def swept_numbers(runs: list[dict], dataset: str | None = None) -> list[str]:
    """The numeric params that differ among these FINISHED runs (of `dataset`): the chart's axes."""
    if dataset is not None:
        runs = [r for r in runs if dataset_of(r) == dataset]
    if len(runs) < 2:
        return []
    return swept_params(_runs_frame(runs), RANK_METRIC).numeric[:PARALLEL_MAX_PARAMS]


def parallel_chart(params: list[str]) -> dict:
    """The UI's parallel-coordinates card: `params` and the ranking metric as axes, every run of the
    view drawn (not only the first ten the table shows)."""
    return {"uuid": PARALLEL_CHART_UUID, "type": "PARALLEL", "runsCountToCompare": 10,
            "metricSectionId": GLANCE_SECTION["uuid"], "deleted": False, "isGenerated": False,
            "selectedParams": list(params), "selectedMetrics": [RANK_METRIC], "showAllRuns": True}


def sorted_datasets(names) -> list[str]:
    """Each dataset once, real CIFAR-10 first, generated data last (`ranking.dataset_order`); none
    that a view's filter could not quote."""
    return sorted({name for name in names if name and "'" not in name}, key=dataset_order)


def view_key(dataset: str) -> str:
    """`cifar_leaderboard.synthetic-cat-dog`: a dataset's view, in characters a tag key and a URL take."""
    return f"{VIEW_KEY}.{re.sub(r'[^A-Za-z0-9_.-]+', '-', dataset).strip('-')}"


def dataset_filter(dataset: str) -> str:
    """The runs a dataset's leaderboard ranks: its FINISHED runs (a run still going has no final
    figures; it would sort among them on its partial ones), never a sweep's parent."""
    return f"tags.{DATASET_TAG} = '{dataset}' AND {FINISHED_ONLY}"


def _state(order_by: str, search: str, group_by: dict | None, params: list[str] = ()) -> dict:
    columns = [RUN_NAME_COLUMN, CREATED_COLUMN, *LEADERBOARD_COLUMNS]
    return {"orderByKey": order_by, "orderByAsc": False, "searchFilter": search,
            "selectedColumns": list(LEADERBOARD_COLUMNS), "columnOrder": columns,
            "columnWidths": dict(COLUMN_WIDTHS), "groupBy": group_by,
            "compareRunCharts": [parallel_chart(params)] if params else [], "isAccordionReordered": True,
            "compareRunSections": [*([dict(GLANCE_SECTION)] if params else []),
                                   *({"uuid": f"cifar-{name}", "name": name, "display": True, "isReordered": False}
                                     for name in CHART_SECTIONS)]}


def _envelope(name: str, state: dict, now_ms: int | None) -> str:
    """The UI's saved-view record: name, times, the state as JSON text."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    return json.dumps({"name": name, "createdAt": now_ms, "updatedAt": now_ms, "state": json.dumps(state)})


def leaderboard_view(dataset: str, now_ms: int | None = None, params: list[str] = ()) -> str:
    """One dataset's ranked runs table: its FINISHED runs, best_val_acc descending, the leaderboard's
    columns (the sweep among the first) visible. One view per dataset, not one table grouped by
    dataset: the UI orders groups by their best value, which puts a synthetic demo's 90% above
    real CIFAR-10. `params`: the axes of its parallel-coordinates chart (none: no chart)."""
    return _envelope(f"{VIEW_NAME}: {dataset}",
                     _state(f"metrics.`{RANK_METRIC}`", dataset_filter(dataset), None, params), now_ms)


def all_runs_view(now_ms: int | None = None) -> str:
    """Every run, any status, newest first, grouped by dataset (sweep parents under "Additional runs").
    No parallel-coordinates chart: grouped, the UI draws a line per group, whose params are no one
    value."""
    group = {"aggregateFunction": "max", "groupByKeys": [{"mode": "tag", "groupByData": DATASET_TAG}]}
    return _envelope(ALL_RUNS_NAME, _state("attributes.start_time", "", group), now_ms)


def _set_experiment_tag(url: str, exp_id: str, key: str, value: str) -> None:
    _post(url, "experiments/set-experiment-tag", {"experiment_id": exp_id, "key": key, "value": value})


def prepare_experiment(url: str, experiment: dict) -> tuple[list[str], bool]:
    """Through the server's REST API: tag the experiment as model training (when no kind, or only
    the UI's own guess, is set) and store its views, a leaderboard per dataset and every run, in
    place of the ones this command stored before (a dataset whose runs are gone loses its view).

    (the datasets, in the leaderboard's order; whether the views are stored). A server that refuses
    the tags still gets links, sorted and filtered by the URL instead.
    """
    exp_id, datasets, tags = experiment["experiment_id"], [], _tags(experiment)
    try:
        finished = list(_search_runs(url, [exp_id], FINISHED_ONLY))
        # In the leaderboard's order: real CIFAR-10 first, generated data last.
        datasets = sorted_datasets(dataset_of(run) for run in finished)
        if needs_kind_tag(tags):
            _set_experiment_tag(url, exp_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
        views = {view_key(name): leaderboard_view(name, params=swept_numbers(finished, name)) for name in datasets}
        views[ALL_RUNS_KEY] = all_runs_view()
        for key, view in views.items():
            _set_experiment_tag(url, exp_id, VIEW_TAG_PREFIX + key, view)
        ours = VIEW_TAG_PREFIX + VIEW_KEY
        stale = [k for k in tags if (k == ours or k.startswith(ours + ".")) and k[len(VIEW_TAG_PREFIX):] not in views]
        for key in stale:
            _post(url, "experiments/delete-experiment-tag", {"experiment_id": exp_id, "key": key})
    except (urllib.error.URLError, OSError, ValueError) as err:
        print(f"cifar-ui: could not store the leaderboard views on experiment {experiment['name']!r} ({err}); "
              "the links sort and filter the runs table but show MLflow's default columns", file=sys.stderr)
        return datasets, False
    return datasets, True


def runs_page(url: str, exp_id: str, key: str | None, dataset: str | None = None) -> str:
    """The experiment's model-training runs table: through a stored view (`key`), or, where none
    could be stored, sorted (and filtered to `dataset`) by URL facets with MLflow's default columns."""
    if key:
        return f"{url}/#/experiments/{exp_id}/runs?viewStateShareKey={key}&{MACHINE_LEARNING}"
    return _with_facets(url, exp_id, dataset_filter(dataset) if dataset else None)


def _with_facets(url: str, exp_id: str, search: str | None) -> str:
    facets = {"orderByKey": f"metrics.`{RANK_METRIC}`", "orderByAsc": "false"}
    if search:
        facets["searchFilter"] = search
    return f"{url}/#/experiments/{exp_id}/runs?{MACHINE_LEARNING}&{urllib.parse.urlencode(facets, quote_via=quote)}"


def run_page(url: str, exp_id: str, run_id: str) -> str:
    """A run's page in the model-training layout (a run page opened without `workflowType` switches a
    fresh browser to the GenAI one): the form of every run link the project prints."""
    return f"{url}/#/experiments/{exp_id}/runs/{run_id}?{MACHINE_LEARNING}"


def sweep_page(url: str, exp_id: str, sweep: str) -> str:
    """One sweep's jobs (their `sweep` tag), best first, in the model-training layout: MLflow's default
    columns (URL facets; a stored view would need one tag per sweep)."""
    return _with_facets(url, exp_id, f"tags.{SWEEP_TAG} = '{sweep}'")


def leaderboard_links(url: str, experiment: dict, datasets: list[str], stored: bool) -> list[str]:
    """The lines that say where to look: the first dataset's leaderboard on the `MLflow UI:` line,
    then each other dataset's, then every run."""
    exp_id, name = experiment["experiment_id"], experiment["name"]
    if not datasets:
        return [f"MLflow UI: {runs_page(url, exp_id, ALL_RUNS_KEY if stored else None)}",
                f"  every run of {name}, newest first (no FINISHED run to rank yet)"]
    first, others = datasets[0], datasets[1:]
    lines = [f"MLflow UI: {runs_page(url, exp_id, view_key(first) if stored else None, first)}",
             f"  the FINISHED runs of {name} on {first}, ranked by {RANK_METRIC}, with their sweep"]
    lines += [f"  on {other}: {runs_page(url, exp_id, view_key(other) if stored else None, other)}" for other in others]
    if stored:
        lines.append(f"  every run, any status, newest first: {runs_page(url, exp_id, ALL_RUNS_KEY)}")
    return lines
