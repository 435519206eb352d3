#!/usr/bin/env bash
# The GPU check on the GPU machine, which has CUDA and its own Python (torch, torchvision) but no
# network: checks that Python is the one the bundle was built for, installs the wheels that
# benchmarks/gpu_bundle.sh put in .gpu_bundle/, makes this checkout importable (an editable install:
# `cifar_sweep.conf` maps to conf/), then runs benchmarks/gpu_check.py, which prints one summary and
# writes gpu_check.json after every step. Its files go to $OUT/gpu_check (the device tool's output
# folder, at most 8 files come back) when that is set, else to benchmarks/results/gpu_check.
#
# The device call (the `run` tool), after `bash benchmarks/gpu_bundle.sh` here (wheels for Python 3.12):
#   carry     [".gpu_bundle"]
#   command   bash benchmarks/gpu_check.sh
#   timeout_s 330
# It finishes in under 5 minutes (install about 20 s, then a budget of at most 285 s, each step
# killed at its own limit), which leaves time for a second try within the 15 minutes a task gets.
# Rehearse it on the CPU first (../shared/tools/device-standin/README.md):
#   PY_VERSION=3.11 bash benchmarks/gpu_bundle.sh
#   ../shared/tools/device-standin/standin.sh -- bash benchmarks/gpu_check.sh --smoke
set -uo pipefail
cd "$(dirname "$0")/.."
t0=$SECONDS
TOTAL_S=${GPU_CHECK_TOTAL_S:-305}  # everything, the install included: under the call's 330 s
CAP_S=285
if [[ " $* " == *" --smoke "* ]]; then  # the rehearsal on a CPU: the same steps, slower
  TOTAL_S=${GPU_CHECK_TOTAL_S:-900} CAP_S=900
fi
BUNDLE=.gpu_bundle
PY=${PYTHON:-python3}
LOG=${OUT:+$OUT/gpu_check}
LOG=${LOG:-benchmarks/results/gpu_check}
mkdir -p "$LOG"
say() { echo "gpu_check: $*" | tee -a "$LOG/setup.log"; }
fail() { say "$1" >&2; exit "${2:-2}"; }

[[ -d $BUNDLE/wheels ]] || fail "no $BUNDLE/wheels: run benchmarks/gpu_bundle.sh where pip works, and carry $BUNDLE"
# The interpreter before anything is installed: wheels of another Python version install without a
# word and fail at the first import of a compiled one.
have=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) \
  || fail "no Python at '$PY'; set PYTHON to the machine's interpreter"
want=$(cat "$BUNDLE/python_version" 2>/dev/null || echo "?")
[[ $have == "$want" ]] \
  || fail "$BUNDLE holds wheels for Python $want, and $PY is Python $have: rebuild it with PY_VERSION=$have bash benchmarks/gpu_bundle.sh"
"$PY" -c 'import torch' 2>/dev/null || fail "$PY has no torch: the check runs on the machine's own torch"

"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  "$BUNDLE"/wheels/*.whl >>"$LOG/setup.log" 2>&1 || fail "installing the carried wheels failed (see setup.log)" 3
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PATH=/tmp/site/bin:$PATH
# No build isolation: the image's setuptools builds it, nothing is fetched. Where that setuptools
# cannot (too old for an editable wheel), the copy on that machine gets `cifar_sweep/conf` as a link
# to conf/ instead: the same package layout an install makes.
if ! "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . >>"$LOG/setup.log" 2>&1; then
  say "editable install refused ($(tail -1 "$LOG/setup.log")); linking cifar_sweep/conf instead"
  ln -sfn ../conf cifar_sweep/conf
  export PYTHONPATH=$PWD:$PYTHONPATH
fi
"$PY" -c 'import cifar_sweep.train, mlflow, hydra' >>"$LOG/setup.log" 2>&1 \
  || fail "cifar_sweep does not import after the install (see setup.log): a wheel is missing from the bundle" 3
spent=$((SECONDS - t0))
budget=$((TOTAL_S - spent))
((budget > CAP_S)) && budget=$CAP_S
say "Python $have, wheels and checkout installed in ${spent} s; the check's budget: ${budget} s"
export CIFAR_SWEEP_DATA=$PWD/$BUNDLE/data/cifar10-jpeg.tar.gz PYTHONUNBUFFERED=1 MPLBACKEND=Agg
exec "$PY" benchmarks/gpu_check.py --log-dir "$LOG" --budget "$budget" "$@"
