"""`cifar-ui`: MLflow's own UI on the project's store, bound to 127.0.0.1 unless told otherwise.

    cifar-ui                                  # the project's SQLite store (runs/mlflow.db)
    cifar-ui --port 5001 --tracking-uri sqlite:////data/lab/runs/mlflow.db
    cifar-ui --tracking-uri postgresql://mlflow:mlflow@db-host/mlflow --artifacts-destination /data/mlartifacts
    cifar-ui --tracking-uri http://127.0.0.1:5000   # a tracking server serves its UI itself: checked, not started
    cifar-ui -- --allowed-hosts lab.example.org     # anything after `--` goes to `mlflow server` as is
    cifar-ui --verbose                        # the server's access log too (one line per request)

No home-made web app: this starts `mlflow server` (the same program as `mlflow ui`), waits until
`GET /health` answers OK (about 20 s on a small machine), prints the address and runs until Ctrl-C.
The server is quiet (errors and warnings only) unless `--verbose`.

The link it prints opens the leaderboard without a click. What MLflow 3.17's UI takes from the URL
and from the experiment (read from its bundled JavaScript, and checked in headless Chromium):
- `workflowType=machine_learning` in the URL: the model-training pages, not the GenAI home and its
  traces overview, which a fresh browser gets on any page opened without it (a run's page too,
  whatever the experiment's kind tag says). Every link this project prints carries it: `runs_page`,
  `run_page` (a run), `sweep_page` (one sweep's jobs, best first).
- the experiment tag `mlflow.experimentKind=custom_model_development`: the experiment opens on its
  runs table. Training creates experiments so and tags older ones on first use; so does this command.
- `viewStateShareKey=<key>`: a view stored in the experiment tag `mlflow.sharedViewState.<key>` (the
  UI's own "saved view" record: a JSON envelope around the view state). It carries what the URL
  cannot: the visible columns, their order and widths, grouping, the chart view's section order;
  and the sort and the search filter. Facets in the URL (orderByKey, searchFilter, ...) would make
  the UI skip the stored view, so a link carries the key alone.
The views this command writes on the experiment it shows:
- one leaderboard per dataset, `cifar_leaderboard.<dataset>`: the FINISHED runs on that dataset (a
  run still going, or one whose process died, has partial figures and is not ranked), best_val_acc
  first, the leaderboard's columns first, among them `sweep` (which sweep a job belongs to: its
  runs' tag: when the sweep started, such as `12-04 03:41:07`), the run name column wide enough
  for about 32 characters, charts opening on "Model metrics" (the curves) before the per-class
  sections. The link printed first is the first dataset's in the leaderboard's order: real
  CIFAR-10 whenever the experiment has a finished run on it, so a synthetic demo never ranks above
  it (the UI sorts groups by their best value: one table grouped by dataset put the demo first).
  The other datasets' links follow; the UI's "Saved views" menu (top right of the runs page) lists
  every view by name ("Leaderboard: cifar10-jpeg", "Leaderboard: synthetic", ...).
- `cifar_all_runs`: every run, any status, newest first, grouped by dataset (the place to watch a
  run in progress; sweep parents, which have no dataset, fold away under "Additional runs").
Which experiment: `--experiment`, else the project's default (`cifar_sweep`), else, in a store that
has none by that name, the experiment of the latest run (or the only one there is), saying so.
What it cannot do: open the bare address (`/`) on the runs table; keep MLflow's assistant panel from
opening on a first visit to a loopback address (closing it once is remembered); nest a sweep's jobs
under their parent while sorted by a metric (MLflow nests only in its creation-time order: the
sweep column says it instead); order the chart sections of a single run's page, where the
per-class sections (`class_acc/`, `class_ap/`) come before the curves (MLflow puts prefixed sections
first there, and keeps that page's layout in the browser only).
Torch-free, like the other reporting commands.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from urllib.parse import quote

from cifar_sweep.analysis.ranking import dataset_order
from cifar_sweep.commands import shell
from cifar_sweep.config.paths import default_tracking_uri
from cifar_sweep.tracking.queries import DEFAULT_EXPERIMENT
from cifar_sweep.tracking.store import EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND, needs_kind_tag, sqlite_path

PROG = "cifar-ui"

# The UI's saved views this command keeps on the experiment (experiment tags
# `mlflow.sharedViewState.<key>`), and what they show.
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
)
FINISHED_ONLY = "attributes.status = 'FINISHED'"
MACHINE_LEARNING = "workflowType=machine_learning"  # the model-training layout, not the GenAI one
# uvicorn (what `mlflow server` runs) without its per-request access log; MLflow's own INFO lines off.
QUIET_UVICORN_OPTS = "--log-level warning --no-access-log"
_SERVER_OPTS = ("--uvicorn-opts", "--gunicorn-opts", "--waitress-opts", "--dev")

LOOPBACK = "127.0.0.1"
READY_TIMEOUT_S = 180.0  # a cold start imports all of MLflow; slower on a busy 2-core machine


def server_command(uri: str, host: str, port: int, workers: int = 1,
                   artifacts_destination: str | None = None, extra: list[str] | None = None,
                   verbose: bool = False) -> list[str]:
    """The `mlflow server` command line for a database store (SQLite or PostgreSQL/MySQL).

    Artifacts: training gives a SQLite store's experiments `runs/artifacts` as artifact_location,
    which the server reads directly; `--artifacts-destination` is set to the same folder so that an
    experiment created from the UI lands there too (MLflow's own default, `./mlartifacts`, depends on
    the working directory).
    """
    db = sqlite_path(uri)
    if artifacts_destination is None and db is not None:
        artifacts_destination = str(db.parent / "artifacts")
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
           "--host", host, "--port", str(port), "--workers", str(workers)]
    if artifacts_destination:
        cmd += ["--serve-artifacts", "--artifacts-destination", artifacts_destination]
    extra = list(extra or [])
    if not any(a.split("=", 1)[0] == "--registry-store-uri" for a in extra):
        cmd += ["--registry-store-uri", uri]  # MLflow's default too, without its line saying so
    if not verbose and not any(a.split("=", 1)[0] in _SERVER_OPTS for a in extra):
        cmd += ["--uvicorn-opts", QUIET_UVICORN_OPTS]  # the user's own server options win
    return cmd + extra


# What `mlflow server` says on every start that is no error: left out unless --verbose.
_START_NOTES = ("[MLflow] Security middleware enabled with default settings",)


def relay_errors(stream, out=None) -> threading.Thread:
    """Copy the server's stderr to ours, without its start-up notes (a thread, ends with the stream)."""
    out = out or sys.stderr

    def pump():
        for line in iter(stream.readline, ""):
            if not line.startswith(_START_NOTES):
                out.write(line)
                out.flush()

    thread = threading.Thread(target=pump, name="cifar-ui-stderr", daemon=True)
    thread.start()
    return thread


def url_for(host: str, port: int) -> str:
    shown = LOOPBACK if host in ("0.0.0.0", "::", "") else host
    return f"http://[{shown}]:{port}" if ":" in shown else f"http://{shown}:{port}"


def health(url: str, timeout: float = 2.0) -> str | None:
    """The body of GET <url>/health, or None while nothing answers."""
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout) as resp:
            return resp.read().decode(errors="replace").strip()
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return None


def wait_until_healthy(url: str, proc: subprocess.Popen | None = None, timeout: float = READY_TIMEOUT_S) -> bool:
    """Poll /health until it says OK; False on timeout or if `proc` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        if health(url) == "OK":
            return True
        time.sleep(0.5)
    return False


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


def ranked_datasets(url: str, exp_id: str) -> list[str]:
    """The datasets the experiment's FINISHED runs were trained on (their `dataset` tag), in the
    leaderboard's order: real CIFAR-10 first, generated data last."""
    names = (_tags(run.get("data", {})).get(DATASET_TAG) for run in _search_runs(url, [exp_id], FINISHED_ONLY))
    return sorted_datasets(names)


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


def _state(order_by: str, search: str, group_by: dict | None) -> dict:
    columns = [RUN_NAME_COLUMN, CREATED_COLUMN, *LEADERBOARD_COLUMNS]
    return {"orderByKey": order_by, "orderByAsc": False, "searchFilter": search,
            "selectedColumns": list(LEADERBOARD_COLUMNS), "columnOrder": columns,
            "columnWidths": dict(COLUMN_WIDTHS), "groupBy": group_by,
            "compareRunCharts": [], "isAccordionReordered": True,
            "compareRunSections": [{"uuid": f"cifar-{name}", "name": name, "display": True, "isReordered": False}
                                   for name in CHART_SECTIONS]}


def _envelope(name: str, state: dict, now_ms: int | None) -> str:
    """The UI's saved-view record: name, times, the state as JSON text."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    return json.dumps({"name": name, "createdAt": now_ms, "updatedAt": now_ms, "state": json.dumps(state)})


def leaderboard_view(dataset: str, now_ms: int | None = None) -> str:
    """One dataset's ranked runs table: its FINISHED runs, best_val_acc descending, the leaderboard's
    columns (the sweep among the first) visible. One view per dataset, not one table grouped by
    dataset: the UI orders groups by their best value, which puts a synthetic demo's 90% above
    real CIFAR-10."""
    return _envelope(f"{VIEW_NAME}: {dataset}", _state(f"metrics.`{RANK_METRIC}`", dataset_filter(dataset), None),
                     now_ms)


def all_runs_view(now_ms: int | None = None) -> str:
    """Every run, any status, newest first, grouped by dataset (sweep parents under "Additional runs")."""
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
        datasets = ranked_datasets(url, exp_id)
        if needs_kind_tag(tags):
            _set_experiment_tag(url, exp_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
        views = {view_key(name): leaderboard_view(name) for name in datasets} | {ALL_RUNS_KEY: all_runs_view()}
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


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def stop_group(proc: subprocess.Popen, grace_s: float = 15.0) -> None:
    """End the server and everything it started (uvicorn and its workers): they share its process group.

    SIGTERM first (a clean uvicorn shutdown; SIGINT does the same but uvicorn re-raises it at the end
    and prints a KeyboardInterrupt traceback), then SIGINT, then SIGKILL; the group, not just the pid,
    since `mlflow server` does not always pass a signal on to its children.
    """
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGINT, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:  # the whole group is gone
            break
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue
        if not _group_alive(proc.pid):
            break
    proc.poll()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _raise_interrupt(signum, frame):  # SIGTERM/SIGHUP/SIGINT: stop the server, then exit
    raise KeyboardInterrupt


def show_remote(uri: str, experiment: str | None = None) -> int:
    """An http(s) tracking server already serves the UI: check it and say where to look."""
    state = health(uri, timeout=10.0)
    if state != "OK":
        print(f"cifar-ui: no MLflow server answers at {uri} (GET /health: {state or 'no answer'}).\n"
              "Start one with scripts/tracking_server.sh, or give a local store: --tracking-uri sqlite:///...",
              file=sys.stderr)
        return 1
    url = uri.rstrip("/")
    print(f"The tracking server at {uri} serves the MLflow UI itself: open {url}/\n"
          "(bound to its host's loopback? forward it: ssh -N -L 5000:127.0.0.1:5000 <server-host>)", flush=True)
    found, note = choose_experiment(url, experiment)
    if note:
        print(f"cifar-ui: {note}", flush=True)
    if found is not None:
        print("\n".join(leaderboard_links(url, found, *prepare_experiment(url, found))), flush=True)
    return 0


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Start the MLflow UI on the project's store (default: the SQLite store under runs/), "
                    "bound to 127.0.0.1. Arguments after `--` go to `mlflow server` unchanged.")
    parser.add_argument("--port", type=int, default=5000, help="port to serve on (0: any free port; default 5000)")
    parser.add_argument("--tracking-uri", default=None,
                        help="store to show: sqlite:///..., postgresql://..., or an http(s) tracking server "
                             f"(default: {default_tracking_uri()})")
    parser.add_argument("--host", default=LOOPBACK,
                        help="interface to bind (default 127.0.0.1: this machine only). Binding 0.0.0.0 exposes "
                             "the runs to the network with no login: prefer an SSH tunnel, or a tracking server "
                             "with --app-name basic-auth (see docs/scaling.md)")
    parser.add_argument("--experiment", default=None,
                        help=f"experiment whose runs to show (default: {DEFAULT_EXPERIMENT}, or in a store without "
                             "it the experiment of the latest run)")
    parser.add_argument("--workers", type=int, default=1, help="server worker processes (default 1)")
    parser.add_argument("--artifacts-destination", default=None,
                        help="artifact folder/URI the server proxies (default for SQLite: runs/artifacts beside the DB)")
    parser.add_argument("--timeout", type=float, default=READY_TIMEOUT_S,
                        help=f"seconds to wait for the server to answer /health (default {READY_TIMEOUT_S:.0f})")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="the server's INFO lines and access log (one line per request); default: errors and "
                             "warnings only")
    return parser.parse_args(argv), extra


@shell.guarded(PROG)
def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(argv)
    uri = args.tracking_uri or default_tracking_uri()
    if uri.startswith(("http://", "https://")):
        return show_remote(uri, args.experiment)
    if "://" not in uri:
        print(f"cifar-ui: {uri!r} is not a store URI; give sqlite:///<path>, postgresql://... or http://host:port",
              file=sys.stderr)
        return 2
    db = sqlite_path(uri)
    if db is not None:
        if not db.exists():
            print(f"cifar-ui: {db} does not exist yet (no run has been tracked there); "
                  "MLflow will create an empty store", file=sys.stderr)
        db.parent.mkdir(parents=True, exist_ok=True)
    port = free_port(args.host) if args.port == 0 else args.port
    if port_in_use(args.host, port):
        print(f"cifar-ui: port {port} on {args.host} is taken (another UI?); choose one with --port", file=sys.stderr)
        return 1
    url = url_for(args.host, port)
    cmd = server_command(uri, args.host, port, args.workers, args.artifacts_destination, extra, args.verbose)
    print(f"cifar-ui: starting MLflow on {uri} (ready in about 20 s) ...", flush=True)
    # Its own process group, so that stopping it reaches every process it starts. MLflow's
    # server-side job runner (GenAI scorers, a pool of huey workers) is of no use here: off, unless
    # the user asks for it.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")}
    if not args.verbose:  # MLflow's own INFO lines and its libraries' deprecation notes, unless asked
        env.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        env.setdefault("PYTHONWARNINGS", "ignore")
    proc = subprocess.Popen(cmd, env=env, start_new_session=True,
                            stderr=None if args.verbose else subprocess.PIPE, text=True)
    if proc.stderr is not None:
        relay_errors(proc.stderr)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)
    try:
        if not wait_until_healthy(url, proc, args.timeout):
            code = proc.poll()
            why = f"exited with code {code}" if code is not None else f"did not answer within {args.timeout:.0f} s"
            print(f"cifar-ui: the MLflow server {why}: {' '.join(cmd)}", file=sys.stderr)
            return 1
        found, note = choose_experiment(url, args.experiment)
        if note:
            print(f"cifar-ui: {note}", flush=True)
        if found is None:
            lines = [f"MLflow UI: {url}"]
        else:  # the link opens the ranked runs table itself: no click between it and the leaderboard
            lines = leaderboard_links(url, found, *prepare_experiment(url, found))
        print("\n".join(lines + [f"  (server {url}, store {uri}; Ctrl-C to stop)"]), flush=True)
        if args.host != LOOPBACK:
            print(f"cifar-ui: bound to {args.host}: anyone who can reach this port sees (and can edit) the runs",
                  file=sys.stderr)
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not cut the (bounded) clean-up short
        stop_group(proc)


if __name__ == "__main__":
    sys.exit(main())
