#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): every CUDA path of luab-data, measured, in one run.
#   bash scripts/gpu_check.sh               # GPU machine: table + benchmarks/results/gpu-<gpu>.json
#   bash scripts/gpu_check.sh --dry-run     # the same steps on a CPU with tiny sizes
# Any other option goes to the driver (--out, --work, --budget-s, --images, --steps).
#
# On a bare GPU machine (its own python3 and torch, no network) the folder that
# scripts/gpu_bundle.sh builds here travels with the run tool's `carry` (default .gpu/):
# site/ (FFCV and its pure-Python needs, unpacked wheels) goes on PYTHONPATH, lib/ (the shared
# libraries FFCV links) on LD_LIBRARY_PATH, fashion-mnist/ feeds the sample generator.
set -euo pipefail
cd "$(dirname "$0")/.."

bundle=${LUAB_GPU_BUNDLE:-.gpu}
if [ -d "$bundle/site" ]; then
  export PYTHONPATH="$PWD/$bundle/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ -d "$bundle/lib" ]; then
  export LD_LIBRARY_PATH="$PWD/$bundle/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
if [ -d "$bundle/fashion-mnist" ] && [ -z "${LUAB_FASHION_MNIST:-}" ]; then
  export LUAB_FASHION_MNIST="$PWD/$bundle/fashion-mnist"
fi
export PYTHONUNBUFFERED=1

py=${PYTHON:-}
if [ -z "$py" ]; then
  if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
fi
exec "$py" benchmarks/gpu_check.py "$@"
