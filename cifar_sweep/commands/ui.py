"""`cifar-ui`: MLflow's own UI on the project's store, bound to 127.0.0.1 unless told otherwise.

    cifar-ui                                  # the project's SQLite store (runs/mlflow.db)
    cifar-ui --port 5001 --tracking-uri sqlite:////data/lab/runs/mlflow.db
    cifar-ui --tracking-uri postgresql://mlflow:mlflow@db-host/mlflow --artifacts-destination /data/mlartifacts
    cifar-ui --tracking-uri http://127.0.0.1:5000   # a tracking server serves its UI itself: checked, not started
    cifar-ui -- --allowed-hosts lab.example.org     # anything after `--` goes to `mlflow server` as is

No home-made web app: this starts `mlflow server` (the same program as `mlflow ui`), waits until
`GET /health` answers OK (about 20 s on a small machine), prints the address and runs until Ctrl-C.
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
import time
import urllib.error
import urllib.parse
import urllib.request

from cifar_sweep.commands import shell
from cifar_sweep.config.paths import default_tracking_uri
from cifar_sweep.tracking.queries import sqlite_path

PROG = "cifar-ui"
DEFAULT_EXPERIMENT = shell.DEFAULT_EXPERIMENT

LOOPBACK = "127.0.0.1"
READY_TIMEOUT_S = 180.0  # a cold start imports all of MLflow; slower on a busy 2-core machine


def server_command(uri: str, host: str, port: int, workers: int = 1,
                   artifacts_destination: str | None = None, extra: list[str] | None = None) -> list[str]:
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
    return cmd + list(extra or [])


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


def experiment_id(url: str, name: str) -> str | None:
    """The id of experiment `name` on the running server (REST), or None if it has none yet."""
    query = urllib.parse.urlencode({"experiment_name": name})
    try:
        with urllib.request.urlopen(f"{url}/api/2.0/mlflow/experiments/get-by-name?{query}", timeout=10) as resp:
            return json.load(resp)["experiment"]["experiment_id"]
    except (urllib.error.URLError, OSError, KeyError, ValueError):
        return None


def runs_page(url: str, exp_id: str, order_by: str = "best_val_acc") -> str:
    """The experiment's runs table, best first. Ordering by a metric also lists a sweep's jobs as rows
    of their own (MLflow folds child runs under their parent only when sorted by creation time)."""
    key = urllib.parse.quote(f"metrics.`{order_by}`")
    return f"{url}/#/experiments/{exp_id}/runs?orderByKey={key}&orderByAsc=false"


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

    SIGINT first (what Ctrl-C sends: a clean uvicorn shutdown), then SIGTERM, then SIGKILL; the group,
    not just the pid, since `mlflow server` does not always pass a signal on to its children.
    """
    for sig, wait_s in ((signal.SIGINT, grace_s), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
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
    exp_id = experiment_id(uri.rstrip("/"), experiment)
    if exp_id is not None:
        print(f"runs of {experiment}, best first: {runs_page(uri.rstrip('/'), exp_id)}", flush=True)
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
    cmd = server_command(uri, args.host, port, args.workers, args.artifacts_destination, extra)
    print(f"cifar-ui: starting MLflow on {uri} (ready in about 20 s) ...", flush=True)
    # Its own process group, so that stopping it reaches every process it starts. MLflow's
    # server-side job runner (GenAI scorers, a pool of huey workers) is of no use here: off, unless
    # the user asks for it.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")}
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)
    try:
        if not wait_until_healthy(url, proc, args.timeout):
            code = proc.poll()
            why = f"exited with code {code}" if code is not None else f"did not answer within {args.timeout:.0f} s"
            print(f"cifar-ui: the MLflow server {why}: {' '.join(cmd)}", file=sys.stderr)
            return 1
        print(f"MLflow UI: {url}   (store: {uri}; Ctrl-C to stop)", flush=True)
        exp_id = experiment_id(url, args.experiment)
        if exp_id is not None:
            print(f"runs of {args.experiment}, best first: {runs_page(url, exp_id)}", flush=True)
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
