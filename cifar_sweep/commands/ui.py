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
  traces overview (which a fresh browser gets, whatever the experiment's kind tag says); the browser
  remembers the mode.
- the experiment tag `mlflow.experimentKind=custom_model_development`: the experiment opens on its
  runs table. Training creates experiments so and tags older ones on first use; so does this command.
- `viewStateShareKey=<key>`: a view stored in the experiment tag `mlflow.sharedViewState.<key>` (the
  UI's own "saved view" record: a JSON envelope around the view state). It carries what the URL
  cannot: the visible columns and their order, grouping, the chart view's section order; and the
  sort. Facets in the URL (orderByKey, searchFilter, ...) would make the UI skip the stored view, so
  the link carries the key alone. This command writes the view `cifar_leaderboard`: runs grouped by
  their `dataset` tag (one ranking per dataset; sweep parents, which have none, fold away under
  "Additional runs"), best_val_acc first within each, the leaderboard's columns first, and charts
  opening on "Model metrics" (the curves) before the per-class sections.
What it cannot do: put the real CIFAR-10 group first (groups sort by their best value); open the
bare address (`/`) on the runs table; keep MLflow's assistant panel from opening on a first visit to
a loopback address (closing it once is remembered); nest a sweep's jobs under their parent while
sorted by a metric (MLflow nests only in its creation-time order); order the chart sections of a
single run's page, where the per-class sections (`class_acc/`, `class_ap/`) come before the curves
(MLflow puts prefixed sections first there, and keeps that page's layout in the browser only).
Torch-free, like the other reporting commands.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

from cifar_sweep.commands import shell
from cifar_sweep.config.paths import default_tracking_uri
from cifar_sweep.tracking.queries import sqlite_path

PROG = "cifar-ui"
DEFAULT_EXPERIMENT = shell.DEFAULT_EXPERIMENT

# The UI's saved view this command keeps on the experiment, and what it shows.
VIEW_KEY = "cifar_leaderboard"
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
VIEW_NAME = "Leaderboard (cifar-ui)"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
RANK_METRIC = "best_val_acc"
# Column ids as the runs table names them: <attributes|metrics|params|tags>.`<key>`.
CHART_SECTIONS = ("Model metrics", "class_acc", "class_ap", "System metrics")
DATASET_TAG = "dataset"  # training tags each run with its dataset's name: the view groups by it
# Column ids as the runs table names them, <attributes|metrics|params|tags>.`<key>`, in the order
# shown: the table draws only the columns that fit the window (an assistant panel takes a third of
# a laptop screen on a first visit), so the ranking's own columns come first.
LEADERBOARD_COLUMNS = (
    "tags.`model`", "metrics.`best_val_acc`", "metrics.`test_acc`", "attributes.`Dataset`", "tags.`optimizer`",
    "params.`optimizer.lr`", "tags.`schedule`", "params.`trainer.epochs`", "metrics.`train_time_s`", "tags.`device`",
)
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


def _experiment(url: str, name: str) -> dict | None:
    query = urllib.parse.urlencode({"experiment_name": name})
    try:
        with urllib.request.urlopen(f"{url}/api/2.0/mlflow/experiments/get-by-name?{query}", timeout=10) as resp:
            return json.load(resp)["experiment"]
    except (urllib.error.URLError, OSError, KeyError, ValueError):
        return None


def experiment_id(url: str, name: str) -> str | None:
    """The id of experiment `name` on the running server (REST), or None if it has none yet."""
    found = _experiment(url, name)
    return found["experiment_id"] if found else None


def leaderboard_view(now_ms: int | None = None) -> str:
    """The saved-view record (the UI's envelope: name, times, the state as JSON text) of the ranked
    runs table: best_val_acc descending, the leaderboard's columns visible."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    state = {"orderByKey": f"metrics.`{RANK_METRIC}`", "orderByAsc": False, "searchFilter": "",
             "selectedColumns": list(LEADERBOARD_COLUMNS), "columnOrder": list(LEADERBOARD_COLUMNS),
             "groupBy": {"aggregateFunction": "max", "groupByKeys": [{"mode": "tag", "groupByData": DATASET_TAG}]},
             "compareRunCharts": [], "isAccordionReordered": True,
             "compareRunSections": [{"uuid": f"cifar-{name}", "name": name, "display": True, "isReordered": False}
                                    for name in CHART_SECTIONS]}
    return json.dumps({"name": VIEW_NAME, "createdAt": now_ms, "updatedAt": now_ms, "state": json.dumps(state)})


def _set_experiment_tag(url: str, exp_id: str, key: str, value: str) -> None:
    body = json.dumps({"experiment_id": exp_id, "key": key, "value": value}).encode()
    request = urllib.request.Request(f"{url}/api/2.0/mlflow/experiments/set-experiment-tag", data=body,
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10):
        pass


def prepare_experiment(url: str, name: str) -> tuple[str | None, bool]:
    """Through the server's REST API: tag experiment `name` as model training (when no kind, or only
    the UI's own guess, is set) and store the leaderboard view on it.

    (its id, whether the view is stored); the id is None when the store has no such experiment yet
    (nothing to rank). A server that refuses the tags still gets a link, sorted by the URL instead.
    """
    found = _experiment(url, name)
    if found is None:
        return None, False
    exp_id = found["experiment_id"]
    tags = {t["key"]: t.get("value", "") for t in found.get("tags", [])}
    try:
        kind = tags.get(EXPERIMENT_KIND_TAG, "")
        if not kind or kind.endswith(("_inferred", "no_inferred_type")):
            _set_experiment_tag(url, exp_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
        _set_experiment_tag(url, exp_id, VIEW_TAG_PREFIX + VIEW_KEY, leaderboard_view())
    except (urllib.error.URLError, OSError) as err:
        print(f"cifar-ui: could not store the leaderboard view on experiment {name!r} ({err}); "
              "the link sorts the runs table but shows MLflow's default columns", file=sys.stderr)
        return exp_id, False
    return exp_id, True


def runs_page(url: str, exp_id: str, view: bool = True) -> str:
    """The experiment's model-training runs table, best first: through the stored leaderboard view
    (`view`), or sorted by URL facets alone (MLflow's default columns)."""
    if view:
        return f"{url}/#/experiments/{exp_id}/runs?viewStateShareKey={VIEW_KEY}&workflowType=machine_learning"
    key = urllib.parse.quote(f"metrics.`{RANK_METRIC}`")
    return f"{url}/#/experiments/{exp_id}/runs?workflowType=machine_learning&orderByKey={key}&orderByAsc=false"


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


def show_remote(uri: str, experiment: str = DEFAULT_EXPERIMENT) -> int:
    """An http(s) tracking server already serves the UI: check it and say where to look."""
    state = health(uri, timeout=10.0)
    if state != "OK":
        print(f"cifar-ui: no MLflow server answers at {uri} (GET /health: {state or 'no answer'}).\n"
              "Start one with scripts/tracking_server.sh, or give a local store: --tracking-uri sqlite:///...",
              file=sys.stderr)
        return 1
    print(f"The tracking server at {uri} serves the MLflow UI itself: open {uri.rstrip('/')}/\n"
          "(bound to its host's loopback? forward it: ssh -N -L 5000:127.0.0.1:5000 <server-host>)", flush=True)
    exp_id, view = prepare_experiment(uri.rstrip("/"), experiment)
    if exp_id is not None:
        print(f"runs of {experiment}, best first: {runs_page(uri.rstrip('/'), exp_id, view)}", flush=True)
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
    parser.add_argument("--experiment", default=DEFAULT_EXPERIMENT,
                        help="experiment whose runs page to print (default: %(default)s)")
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
        exp_id, view = prepare_experiment(url, args.experiment)
        if exp_id is None:
            print(f"MLflow UI: {url}   (no experiment {args.experiment!r} in this store yet; Ctrl-C to stop)",
                  flush=True)
        else:  # the link opens the ranked runs table itself: no click between it and the leaderboard
            print(f"MLflow UI: {runs_page(url, exp_id, view)}\n"
                  f"  the runs of {args.experiment} by {RANK_METRIC}, one ranking per dataset "
                  f"(server {url}, store {uri}; Ctrl-C to stop)", flush=True)
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
