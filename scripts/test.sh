#!/usr/bin/env bash
# The README's test command: set up (idempotent), lint and format check, then the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check luab_data tests train benchmarks
.venv/bin/ruff format --check luab_data tests train benchmarks
.venv/bin/python -m pytest -q "$@"
