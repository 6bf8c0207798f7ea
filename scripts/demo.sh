#!/usr/bin/env bash
# README command 1: set up, then segment the bundled sample CT with the bundled default model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/liverseg "$@"
