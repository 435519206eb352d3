#!/usr/bin/env bash
# Builds .gpu_bundle/, what benchmarks/gpu_check.sh needs on a GPU machine that has its own Python
# 3.12 with torch and torchvision (and numpy, pandas, matplotlib, scikit-learn, pyarrow, pytest...)
# but no network and none of hydra-core, omegaconf, mlflow, optuna:
#   .gpu_bundle/wheels/  Python 3.12 x86-64 wheels of the packages that image lacks, at the versions
#                        this checkout's .venv runs (the ones the tests passed with);
#   .gpu_bundle/data/    the JPEG copy of CIFAR-10 (the resnet_cifar2 and airbench presets read it).
# MLflow travels as mlflow-skinny + mlflow-tracing (the client, the SQLite store and its migrations;
# 6 MiB) rather than the full `mlflow` wheel (12 MiB more: the web UI's assets and the server,
# which the check never starts). Everything must fit the 64 MiB a device call carries, with the
# working tree; the script prints the sizes and fails above 60 MiB.
#
#   bash benchmarks/gpu_bundle.sh            # then the device call written at the top of gpu_check.sh
#   PY_VERSION=3.11 bash benchmarks/gpu_bundle.sh   # for this machine's Python: the stand-in rehearsal
# Works in a git worktree too (its .venv or PYTHON, its own checkout's files).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${BUNDLE_DIR:-.gpu_bundle}
PY_VERSION=${PY_VERSION:-3.12}  # the device's Python; another value builds a bundle to rehearse with here
LIMIT_MIB=60

[[ -x $PY ]] || { echo "gpu_bundle: no Python at $PY: make this checkout's .venv first (bash scripts/install.sh)," \
                       "or set PYTHON to the python of an environment where cifar_sweep is installed" >&2; exit 1; }
"$PY" -m pip --version >/dev/null 2>&1 || { echo "gpu_bundle: $PY has no pip: the bundle is downloaded with it" >&2; exit 1; }
# The JPEG copy: CIFAR_SWEEP_DATA, else beside this checkout, else beside the main checkout of a worktree.
main_tree=$(dirname "$(git rev-parse --path-format=absolute --git-common-dir 2>/dev/null || echo "$PWD/.git")")
ARCHIVE=${CIFAR_SWEEP_DATA:-}
if [[ -z $ARCHIVE ]]; then
  for candidate in ../shared/datasets/cifar10-jpeg.tar.gz "$main_tree/../shared/datasets/cifar10-jpeg.tar.gz"; do
    [[ -f $candidate ]] && { ARCHIVE=$candidate; break; }
  done
fi

# Not in the device image (its package list: KINDS.md in the device tool's library entry), needed to import
# and run cifar_sweep, its tests and its Hydra plugins. protobuf is in the image, but the
# OpenTelemetry protos MLflow loads are generated for this version of it.
NAMES=(
  hydra-core omegaconf hydra-joblib-launcher hydra-submitit-launcher submitit torchinfo
  mlflow-skinny mlflow-tracing sqlalchemy alembic mako sqlparse cachetools python-dotenv fastapi starlette databricks-sdk
  cryptography cffi pycparser
  opentelemetry-api opentelemetry-sdk opentelemetry-proto opentelemetry-semantic-conventions
  pydantic pydantic-core annotated-types typing-inspection importlib-metadata protobuf
)
# Only an sdist on the index: built here into a pure-Python wheel.
SDIST_ONLY=(antlr4-python3-runtime)

[[ -n $ARCHIVE && -f $ARCHIVE ]] || { echo "gpu_bundle: the JPEG copy of CIFAR-10 was not found" \
  "(${ARCHIVE:-not beside this checkout}); set CIFAR_SWEEP_DATA to it" >&2; exit 1; }
# Carried, never committed: .gitignore names .gpu_bundle/; another folder goes into this repository's
# exclude file (a worktree's .git is a file: git says where that file is).
if ! git check-ignore -q "$OUT/" 2>/dev/null; then
  exclude=$(git rev-parse --git-path info/exclude)
  mkdir -p "$(dirname "$exclude")"
  echo "/$OUT/" >> "$exclude"
fi

freeze=$("$PY" -m pip freeze 2>/dev/null | tr '[:upper:]_' '[:lower:]-')
pin() {  # name==version as installed in .venv
  local line
  line=$(grep -E "^$1==" <<<"$freeze" || true)
  [[ -n $line ]] || { echo "gpu_bundle: $1 is not installed in $PY; install the project first" >&2; exit 1; }
  echo "$line"
}

rm -rf "$OUT/wheels" && mkdir -p "$OUT/wheels" "$OUT/data"
specs=()
for name in "${NAMES[@]}"; do specs+=("$(pin "$name")"); done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d "$OUT/wheels" "${specs[@]}"
for name in "${SDIST_ONLY[@]}"; do
  "$PY" -m pip wheel -q --no-deps --no-binary=:all: -w "$OUT/wheels" "$(pin "$name")"
done
cp "$ARCHIVE" "$OUT/data/cifar10-jpeg.tar.gz"
if [[ -f $ARCHIVE.sha256 ]]; then cp "$ARCHIVE.sha256" "$OUT/data/cifar10-jpeg.tar.gz.sha256"; fi
echo "$PY_VERSION" > "$OUT/python_version"  # gpu_check.sh compares it with the machine's Python first

wheels=$(du -sm --apparent-size "$OUT/wheels" | cut -f1)
data=$(du -sm --apparent-size "$OUT/data" | cut -f1)
# What else travels: tracked files and untracked ones git does not ignore (a deleted one counts nothing).
tree=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | "$PY" -c '
import os, sys
names = set(sys.stdin.buffer.read().split(b"\0")) - {b""}
print(f"{sum(os.path.getsize(n) for n in names if os.path.isfile(n)) / 1048576:.1f}")')
total=$(awk -v a="$wheels" -v b="$data" -v c="$tree" 'BEGIN {printf "%.1f", a + b + c}')
echo "gpu_bundle: $(ls "$OUT/wheels" | wc -l) wheels ${wheels} MiB, data ${data} MiB, working tree ${tree} MiB: ${total} MiB of 64"
awk -v t="$total" -v l="$LIMIT_MIB" 'BEGIN {exit !(t <= l)}' \
  || { echo "gpu_bundle: ${total} MiB is over ${LIMIT_MIB} MiB; the device call carries 64 MiB at most" >&2; exit 1; }
