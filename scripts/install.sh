#!/usr/bin/env bash
# Set up cifar_sweep in ./.venv: `scripts/install.sh` for running, `scripts/install.sh test` for the
# test suite too (adds pytest and the system packages the browser tests drive). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
if [ "${1:-}" = "test" ]; then
  .venv/bin/python -m pip install --quiet -e '.[test]'
  # Debian's Chromium drives the browser tests (headless, no network needed); PostgreSQL backs the
  # tracking-server tests; slurm-wlm and munge make the one-node SLURM cluster of the SLURM tests.
  # All are started by the tests themselves, on loopback only.
  if { ! command -v chromium >/dev/null 2>&1 || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
       || ! [ -x /usr/sbin/slurmctld ] || ! [ -x /usr/sbin/munged ]; } && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's chromium, postgresql, slurm-wlm and munge for the browser, tracking-server and SLURM tests" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        chromium fonts-dejavu-core postgresql slurm-wlm munge >/dev/null) \
      || echo "warning: could not install chromium/postgresql/slurm-wlm/munge; those tests will be skipped" >&2
  fi
else
  .venv/bin/python -m pip install --quiet -e .
fi
echo "cifar_sweep installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
