#!/usr/bin/env bash
# The suite N times in a row beside a CPU hog, each run on a fresh clone of HEAD (so with a cold
# numba cache: numba caches beside the sources), sharing this checkout's .venv.
# Usage: bash scripts/loaded_runs.sh [RUNS=5] [HOGS=2]; a log per run in $LOG_DIR (default
# /tmp/luab-loaded), a line per run on stdout. Exits non-zero if any run failed.
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
hogs=${2:-2}
log_dir=${LOG_DIR:-/tmp/luab-loaded}
repo=$PWD
mkdir -p "$log_dir"
[ -x .venv/bin/python ] || { echo "no .venv: run bash scripts/setup.sh first" >&2; exit 2; }

pids=()
for _ in $(seq "$hogs"); do python3 -c "while True: pass" & pids+=($!); done
trap 'kill "${pids[@]}" 2>/dev/null' EXIT

failed=0
for i in $(seq "$runs"); do
  snap=$(mktemp -d /tmp/luab-snap.XXXXXX)
  git clone -q "$repo" "$snap/repo"
  ln -s "$repo/.venv" "$snap/repo/.venv"
  start=$(date +%s)
  (cd "$snap/repo" && PYTHONPATH="$snap/repo" timeout 3600 .venv/bin/python -m pytest -q \
    -p no:cacheprovider --basetemp="$snap/tmp" >"$log_dir/run$i.log" 2>&1)
  rc=$?
  secs=$(($(date +%s) - start))
  load=$(cut -d' ' -f1-3 /proc/loadavg)
  echo "run $i: rc=$rc ${secs}s load=$load $(tail -1 "$log_dir/run$i.log")"
  [ "$rc" -eq 0 ] || failed=1
  sleep 2  # a process that is on its way out is not left behind
  left=$(pgrep -af "$snap/" | grep -v "^$$ " || true)
  [ -z "$left" ] || { echo "run $i: processes left behind:"; echo "$left"; failed=1; }
  rm -rf "$snap"
done
exit $failed
