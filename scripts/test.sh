#!/usr/bin/env bash
# README command 2: set up, then run the whole test suite (slow tests opt in with --runslow).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Browser tests need Debian chromium (installed here when root; they skip with a reason otherwise).
bash scripts/install_browser.sh || echo "warning: browser install failed; browser tests will skip" >&2
export QT_QPA_PLATFORM=offscreen
exec .venv/bin/python -m pytest -q -rs "$@"
