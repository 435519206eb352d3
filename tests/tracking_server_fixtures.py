"""A real MLflow tracking server on PostgreSQL for the tests: a fixture plugin (conftest.py lists it).

A throwaway PostgreSQL cluster is made in a temp dir (initdb/pg_ctl of Debian's `postgresql`
package, as user `postgres` when the tests run as root: initdb refuses root), listening on loopback
only, on a free port; `scripts/tracking_server.sh` (the documented command) creates the database
and starts `mlflow server` with proxied artifacts. Cluster and server are always stopped in the
fixtures' teardown. The context managers serve benchmarks/bench_shared_store.py too.

Fixtures (module scope): `postgres` (the cluster's superuser URI, no database yet), `tracking_server`
((http URI, artifacts dir)) and `auth_tracking_server` (the same with MLflow's login on: an
AuthServer with the admin's credentials), each on a database of its own.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import REPO

# The login's admin: MLflow (3.16.1+) refuses a password under 12 characters or the old default.
ADMIN_USER = "admin"
ADMIN_PASSWORD = "cifar-sweep-test-admin"


def pg_bin() -> Path | None:
    """The newest Debian PostgreSQL bin dir (/usr/lib/postgresql/<major>/bin), else initdb on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(re.findall(r"\d+", p)[0]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def _as_db_user() -> list[str] | None:
    """Prefix that runs a PostgreSQL program as a non-root user ([] if we are not root; None if impossible)."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return None
    runuser = shutil.which("runuser")
    return [runuser, "-u", "postgres", "--"] if runuser else ["su", "postgres", "-s", "/bin/sh", "-c"]


def _run(prefix: list[str], cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    if prefix and prefix[0] == "su":  # su takes one shell command line
        cmd = [shlex.join(cmd)]
    return subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=timeout, cwd="/")


def postgres_unavailable() -> str | None:
    """Why no PostgreSQL cluster can be made here, or None."""
    if pg_bin() is None:
        return "PostgreSQL is not installed (apt-get install postgresql; scripts/install.sh test does it)"
    if _as_db_user() is None:
        return "running as root and there is no `postgres` user to run initdb as (initdb refuses root)"
    return None


@contextlib.contextmanager
def postgres_cluster() -> Iterator[str]:
    """A private PostgreSQL cluster on 127.0.0.1:<free port>; yields its superuser URI (database `mlflow`,
    not created yet). `fsync` is off: a test cluster trades durability for speed."""
    from cifar_sweep.commands.ui import free_port  # imports MLflow: only once a test asks for a server

    bin_dir, prefix = pg_bin(), _as_db_user()
    why = postgres_unavailable()
    if why:
        raise FileNotFoundError(why)
    # Not under pytest's tmp dir: its parents are private to root, and the cluster runs as `postgres`.
    top = Path(tempfile.mkdtemp(prefix="cifar_sweep_pg_"))
    data, sock, log = top / "data", top / "sock", top / "server.log"
    sock.mkdir()
    if prefix:
        shutil.chown(top, "postgres", "postgres")
        shutil.chown(sock, "postgres", "postgres")
    port = free_port()
    started = False
    try:
        res = _run(prefix, [str(bin_dir / "initdb"), "-D", str(data), "-U", "mlflow", "--auth=trust",
                            "--encoding=UTF8", "--locale=C", "--no-sync"])
        assert res.returncode == 0, f"initdb failed:\n{res.stdout}\n{res.stderr}"
        opts = (f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        res = _run(prefix, [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", opts, "-w", "-t", "60",
                            "start"])
        started = True
        log_text = log.read_text() if log.exists() else ""
        assert res.returncode == 0, f"pg_ctl start failed:\n{res.stdout}\n{res.stderr}\n{log_text}"
        yield f"postgresql://mlflow@127.0.0.1:{port}/mlflow"
    finally:
        if started:
            _run(prefix, [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", "60", "stop"])
        shutil.rmtree(top, ignore_errors=True)


def with_database(uri: str, name: str) -> str:
    """The same cluster, another database (tracking_server.sh creates it)."""
    return uri.rsplit("/", 1)[0] + "/" + name


@contextlib.contextmanager
def tracking_server(backend_uri: str, work: Path, args: tuple[str, ...] = (), env_extra: dict | None = None,
                    workers: int = 2) -> Iterator[str]:
    """scripts/tracking_server.sh on `backend_uri`, artifacts in work/artifacts; yields its http URI.
    Always stopped (the whole process group: the script execs `mlflow server`, which starts uvicorn
    and its workers)."""
    from cifar_sweep.commands.ui import free_port, stop_group, wait_until_healthy

    port = free_port()
    work.mkdir(parents=True, exist_ok=True)
    log_path = work / "server.log"
    env = {**os.environ, "PYTHON": sys.executable, **(env_extra or {})}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            ["bash", str(REPO / "scripts" / "tracking_server.sh"), "--backend-store-uri", backend_uri,
             "--artifacts-destination", str(work / "artifacts"), "--port", str(port), "--workers", str(workers),
             *args], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        ready = wait_until_healthy(url, proc, timeout=300)
        assert ready, f"tracking server not ready (exit {proc.poll()}):\n{log_path.read_text()[-4000:]}"
        yield url
    finally:
        stop_group(proc)


@pytest.fixture(scope="module")
def postgres():
    """A private PostgreSQL cluster on 127.0.0.1:<free port>; yields its superuser URI (no database yet)."""
    why = postgres_unavailable()
    if why:
        pytest.skip(why)
    with postgres_cluster() as uri:
        yield uri


@pytest.fixture(scope="module", name="tracking_server")
def tracking_server_fixture(postgres, tmp_path_factory):
    """scripts/tracking_server.sh on the cluster; yields (http URI, artifacts dir). Always stopped."""
    work = tmp_path_factory.mktemp("tracking_server")
    with tracking_server(postgres, work) as url:
        yield url, work / "artifacts"


@dataclass(frozen=True)
class AuthServer:
    url: str
    username: str
    password: str

    @property
    def credentials(self) -> dict[str, str]:
        """The environment a client logs in with."""
        return {"MLFLOW_TRACKING_USERNAME": self.username, "MLFLOW_TRACKING_PASSWORD": self.password}


@pytest.fixture(scope="module")
def auth_tracking_server(postgres, tmp_path_factory):
    """`scripts/tracking_server.sh --basic-auth`, as docs/scaling.md starts it (its own database and
    user store); yields an AuthServer. Skipped without MLflow's login app (`pip install 'mlflow[auth]'`)."""
    try:
        import flask_wtf  # noqa: F401  what `mlflow server --app-name basic-auth` needs
    except ImportError:
        pytest.skip("MLflow's login app is not installed: pip install 'mlflow[auth]'")
    work = tmp_path_factory.mktemp("auth_server")
    env = {"MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN_PASSWORD, "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-secret-key"}
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env[key] = ""  # the server's own process logs in to nothing
    with tracking_server(with_database(postgres, "mlflow_auth"), work, ("--basic-auth",), env) as url:
        yield AuthServer(url, ADMIN_USER, ADMIN_PASSWORD)
