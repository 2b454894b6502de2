#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): every CUDA path of luab-data, measured, in one run.
#   bash scripts/gpu_check.sh               # GPU machine: table + benchmarks/results/gpu-<gpu>.json
#   bash scripts/gpu_check.sh --dry-run     # the same steps on a CPU with tiny sizes
# Any other option goes to the driver (--out, --work, --budget-s, --images, --steps, --jobs).
#
# On a bare GPU machine (its own python3 and torch, no network) the folder that
# scripts/gpu_bundle.sh builds here travels with the run tool's `carry` (default .gpu/). When
# the interpreter has no FFCV of its own: site/ (FFCV for cp312, unpacked) goes on PYTHONPATH
# and lib/ (the shared libraries FFCV links) on LD_LIBRARY_PATH; without the apt Fashion-MNIST,
# fashion-mnist/ feeds the sample generator.
set -euo pipefail
cd "$(dirname "$0")/.."

py=${PYTHON:-}
if [ -z "$py" ]; then
  if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=python3; fi
fi
bundle=${LUAB_GPU_BUNDLE:-.gpu}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
has_ffcv='import importlib.util as u, sys; sys.exit(u.find_spec("ffcv") is None)'
if [ -d "$bundle/site" ] && ! "$py" -c "$has_ffcv"; then
  export PYTHONPATH="$PWD/$bundle/site:$PYTHONPATH"
  export LD_LIBRARY_PATH="$PWD/$bundle/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
if [ -z "${LUAB_FASHION_MNIST:-}" ] && [ ! -d /usr/share/datasets/fashion-mnist ] \
   && [ -d "$bundle/fashion-mnist" ]; then
  export LUAB_FASHION_MNIST="$PWD/$bundle/fashion-mnist"
fi
export PYTHONUNBUFFERED=1
exec "$py" benchmarks/gpu_check.py "$@"
