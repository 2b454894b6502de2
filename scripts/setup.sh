#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian machine: apt libraries FFCV compiles against,
# a virtual environment in .venv, and the pinned packages of requirements.lock.
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
if [ ! -f "$stamp" ] || ! cmp -s requirements.lock "$stamp"; then
  .venv/bin/pip install -q --upgrade pip wheel setuptools
  # numpy/numba first: FFCV's setup.py needs them and builds without isolation.
  .venv/bin/pip install -q $(grep -E '^(numpy|numba|llvmlite|setuptools|wheel|pkgconfig)==' requirements.lock)
  .venv/bin/pip install -q --no-build-isolation -r requirements.lock
  .venv/bin/pip install -q --no-deps -e .
  cp requirements.lock "$stamp"
fi
