#!/usr/bin/env bash
# The GPU check on a machine with CUDA and its own Python (torch, torchvision) but no network:
# installs the wheels benchmarks/gpu_bundle.sh put in .gpu_bundle/, makes this checkout importable
# (an editable install, as here: `cifar_sweep.conf` maps to conf/), then runs benchmarks/gpu_check.py,
# which prints one summary table. Logs go to $OUT/gpu_check (the device tool's output folder) when
# that is set, else to benchmarks/results/gpu_check. Meant to finish in under 8 minutes.
#
#   device run: carry [".gpu_bundle"], command "bash benchmarks/gpu_check.sh", timeout_s 560
set -uo pipefail
cd "$(dirname "$0")/.."
BUNDLE=.gpu_bundle
PY=${PYTHON:-python3}
[[ -d $BUNDLE/wheels ]] || { echo "gpu_check: no $BUNDLE/wheels: run benchmarks/gpu_bundle.sh where pip works, carry $BUNDLE" >&2; exit 2; }
t0=$SECONDS
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  "$BUNDLE"/wheels/*.whl || { echo "gpu_check: installing the carried wheels failed" >&2; exit 3; }
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PATH=/tmp/site/bin:$PATH
# No build isolation: the image's setuptools builds it, nothing is fetched. Where that setuptools
# cannot (too old for an editable wheel), the copy on that machine gets `cifar_sweep/conf` as a link
# to conf/ instead: the same package layout an install makes.
if ! "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . 2>/tmp/editable.log; then
  echo "gpu_check: editable install refused ($(tail -1 /tmp/editable.log)); linking cifar_sweep/conf instead"
  ln -sfn ../conf cifar_sweep/conf
  export PYTHONPATH=$PWD:$PYTHONPATH
fi
echo "gpu_check: wheels and checkout installed in $((SECONDS - t0)) s"
export CIFAR_SWEEP_DATA=$PWD/$BUNDLE/data/cifar10-jpeg.tar.gz PYTHONUNBUFFERED=1 MPLBACKEND=Agg
LOG=${OUT:+$OUT/gpu_check}
exec "$PY" benchmarks/gpu_check.py --log-dir "${LOG:-benchmarks/results/gpu_check}" "$@"
