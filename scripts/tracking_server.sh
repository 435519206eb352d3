#!/usr/bin/env bash
# An MLflow tracking server on PostgreSQL, for sweeps that run on several processes or machines.
#
#   scripts/tracking_server.sh [--backend-store-uri URI] [--artifacts-destination DIR|URI]
#                              [--host H] [--port P] [--workers N] [--basic-auth] [--no-create-db]
#                              [-- extra `mlflow server` options]
#
# then point training at it, nothing else changes:
#   cifar-sweep -m hydra/launcher=joblib seed=0,1,2,3 tracking.uri=http://127.0.0.1:5000
#   cifar-leaderboard --tracking-uri http://127.0.0.1:5000
#
# Defaults (each also read from the environment):
#   --backend-store-uri      $MLFLOW_BACKEND_STORE_URI or postgresql://mlflow:mlflow@127.0.0.1:5432/mlflow
#   --artifacts-destination  $MLFLOW_ARTIFACTS_DESTINATION or <project>/runs/server-artifacts
#   --host 127.0.0.1 (this machine only)   --port 5000   --workers 2
#
# The database is created if it is missing (the role needs CREATEDB, or create it once yourself).
# One-time PostgreSQL set-up on a Debian/Ubuntu host (as root):
#   apt-get install -y postgresql && service postgresql start
#   runuser -u postgres -- psql -c "CREATE ROLE mlflow LOGIN PASSWORD 'mlflow' CREATEDB"
#
# Artifacts: --serve-artifacts makes the server the artifact proxy: a run's files go over HTTP to
# --artifacts-destination (a local folder here, or s3://..., gs://...), so the training machines need
# no shared file system and no storage credentials. New experiments get `mlflow-artifacts:/` roots.
#
# Shared servers: binding anything but 127.0.0.1 (e.g. --host 0.0.0.0) lets anyone who reaches the port
# read and change every run. Add --basic-auth (MLflow's `--app-name basic-auth`; needs
# `pip install 'mlflow[auth]'` and MLFLOW_FLASK_SERVER_SECRET_KEY set to the same secret on every
# server process) and MLFLOW_AUTH_ADMIN_PASSWORD: the password of the user `admin` that the first
# start creates (12+ characters, not `password1234`; MLflow has no default password since 3.16.1;
# later starts keep the admin's password, change it through /api/2.0/mlflow/users/update-password).
# Clients then set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD. Also pass
# `-- --allowed-hosts mlflow.example.org` for the names clients use, and put TLS (a reverse proxy) in
# front of anything beyond a trusted network: basic auth sends the password with every request.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
HOME_DIR="${CIFAR_SWEEP_HOME:-$ROOT}"

BACKEND="${MLFLOW_BACKEND_STORE_URI:-postgresql://mlflow:mlflow@127.0.0.1:5432/mlflow}"
ARTIFACTS="${MLFLOW_ARTIFACTS_DESTINATION:-$HOME_DIR/runs/server-artifacts}"
HOST=127.0.0.1
PORT=5000
WORKERS=2
AUTH=0
CREATE_DB=1
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --backend-store-uri) BACKEND="$2"; shift 2 ;;
    --artifacts-destination) ARTIFACTS="$2"; shift 2 ;;
    --host) HOST="$2"; shift 2 ;;
    --port) PORT="$2"; shift 2 ;;
    --workers) WORKERS="$2"; shift 2 ;;
    --basic-auth) AUTH=1; shift ;;
    --no-create-db) CREATE_DB=0; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,34p' "$0"; exit 0 ;;
    *) echo "tracking_server.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"
elif [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"
else PY=python3; fi

case "$BACKEND" in
  postgresql://*|postgresql+psycopg://*|postgresql+psycopg2://*) ;;
  *) echo "tracking_server.sh: --backend-store-uri must be postgresql://... (got $BACKEND)" >&2; exit 2 ;;
esac

# The login's requirements are checked before anything is created.
if [ "$AUTH" = 1 ]; then
  if [ -z "${MLFLOW_FLASK_SERVER_SECRET_KEY:-}" ]; then
    echo "tracking_server.sh: --basic-auth needs MLFLOW_FLASK_SERVER_SECRET_KEY (the same on every server)" >&2
    exit 2
  fi
  # MLflow refuses to start its login app without it (and takes 20 s to say so, in a traceback).
  ADMIN_PASSWORD="${MLFLOW_AUTH_ADMIN_PASSWORD:-}"
  if [ "${#ADMIN_PASSWORD}" -lt 12 ] || [ "$ADMIN_PASSWORD" = password1234 ]; then
    echo "tracking_server.sh: --basic-auth needs MLFLOW_AUTH_ADMIN_PASSWORD, the admin's password: 12 or more characters, not password1234 (export it, then start again)" >&2
    exit 2
  fi
  "$PY" -c "import flask_wtf" 2>/dev/null \
    || { echo "tracking_server.sh: --basic-auth needs: $PY -m pip install 'mlflow[auth]'" >&2; exit 2; }
fi

if [ "$CREATE_DB" = 1 ]; then
  # Connect to the server's maintenance database and CREATE DATABASE if the target is missing.
  "$PY" - "$BACKEND" <<'PY'
import sys
from urllib.parse import urlsplit, urlunsplit

import psycopg  # psycopg 3: SQLAlchemy 2.1's default driver for postgresql:// URIs
from psycopg import sql

uri = sys.argv[1].replace("postgresql+psycopg2://", "postgresql://", 1).replace("postgresql+psycopg://", "postgresql://", 1)
parts = urlsplit(uri)
name = parts.path.lstrip("/")
try:
    psycopg.connect(uri, connect_timeout=10).close()
    sys.exit(0)
except psycopg.OperationalError as err:
    if "does not exist" not in str(err):
        sys.exit(f"tracking_server.sh: cannot reach PostgreSQL at {parts.hostname or 'its unix socket'}: {err}")
with psycopg.connect(urlunsplit(parts._replace(path="/postgres")), autocommit=True, connect_timeout=10) as admin:
    admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
print(f"tracking_server.sh: created database {name}", file=sys.stderr)
PY
fi

case "$ARTIFACTS" in
  *://*) ;;
  *) mkdir -p "$ARTIFACTS"; ARTIFACTS="$(cd "$ARTIFACTS" && pwd)" ;;
esac

ARGS=(--backend-store-uri "$BACKEND" --artifacts-destination "$ARTIFACTS" --serve-artifacts
      --host "$HOST" --port "$PORT" --workers "$WORKERS")
if [ "$AUTH" = 1 ]; then
  ARGS+=(--app-name basic-auth)
fi
if [ "$HOST" != 127.0.0.1 ] && [ "$HOST" != localhost ] && [ "$AUTH" = 0 ]; then
  echo "tracking_server.sh: warning: bound to $HOST with no login; anyone reaching port $PORT can read and change the runs (see --basic-auth)" >&2
fi

# MLflow's server-side job runner (GenAI scorers: a pool of huey workers) is not used by this project.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
SHOWN="$(printf %s "$BACKEND" | sed -E 's#//([^:/@]+):[^@]*@#//\1:***@#')"
echo "tracking_server.sh: MLflow on $SHOWN, artifacts in $ARTIFACTS; use tracking.uri=http://$HOST:$PORT" >&2
exec "$PY" -m mlflow server "${ARGS[@]}" "${EXTRA[@]}"
