#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian machine: apt libraries FFCV compiles against,
# a virtual environment in .venv, and the pinned packages of requirements.lock.
# A changed lock syncs .venv to it: packages the lock drops or pins differently (DALI's CUDA 12
# build, a +cpu torch) are removed first, so that nothing of an older lock lingers.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PKGS="libopencv-dev libturbojpeg0-dev pkg-config dataset-fashion-mnist"
missing=""
for p in $APT_PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing+=" $p"; done
if [ -n "$missing" ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.luab-installed
[ -f "$stamp" ] && cmp -s requirements.lock "$stamp" && exit 0

rm -f "$stamp"
pip=(.venv/bin/pip --disable-pip-version-check)
# name==version with the name normalised (PEP 503), one a line
pins() { sed -nE 's/^([A-Za-z0-9][A-Za-z0-9._-]*)==([^ ;#]+).*/\1==\2/p' \
  | awk -F'==' '{n=tolower($1); gsub(/[-_.]+/, "-", n); print n "==" $2}' | LC_ALL=C sort -u; }
stale=$(LC_ALL=C comm -23 <("${pip[@]}" freeze --exclude-editable | pins) <(pins < requirements.lock) \
  | sed 's/==.*//')
if [ -n "$stale" ]; then
  echo "setup: removing what requirements.lock no longer pins:" $stale
  "${pip[@]}" uninstall -y -q $stale
fi
"${pip[@]}" install -q --upgrade pip
# build tools and numpy/numba first: FFCV's setup.py imports them and builds without isolation.
"${pip[@]}" install -q $(grep -E '^(numpy|numba|llvmlite|setuptools|wheel|pkgconfig)==' requirements.lock)
"${pip[@]}" install -q --no-build-isolation -r requirements.lock
"${pip[@]}" install -q --no-deps --no-build-isolation -e .
cp requirements.lock "$stamp"
