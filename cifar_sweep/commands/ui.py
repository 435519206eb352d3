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
from cifar_sweep.commands.ui_views import (
    choose_experiment,
    leaderboard_links,
    prepare_experiment,
)
from cifar_sweep.config.paths import default_tracking_uri
from cifar_sweep.tracking.queries import DEFAULT_EXPERIMENT
from cifar_sweep.tracking.store import sqlite_path

PROG = "cifar-ui"

# The UI's saved views this command keeps on the experiment (experiment tags
# `mlflow.sharedViewState.<key>`), and what they show.
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
