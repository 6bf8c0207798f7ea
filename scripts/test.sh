#!/usr/bin/env bash
# README command 2: set up, then run the whole test suite (slow tests opt in with --runslow).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export QT_QPA_PLATFORM=offscreen
exec .venv/bin/python -m pytest -q -rs "$@"
