#!/usr/bin/env bash
# Install what the browser tests (Testing/test_web_browser.py) need: Debian's chromium,
# the playwright Python package and the web extra (trame-slicer). Idempotent: skips
# what is already there. Playwright never downloads a browser: tests use /usr/bin/chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1

if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core
  else
    echo "install_browser.sh: chromium missing and cannot apt-get it (need root on Debian/Ubuntu); browser tests will skip" >&2
  fi
fi

if ! "$PY" -c "import playwright.sync_api" >/dev/null 2>&1; then
  "$PY" -m pip install -q -c constraints.txt playwright
fi
if ! "$PY" -c "import trame_slicer" >/dev/null 2>&1; then
  "$PY" -m pip install -q -c constraints.txt "trame-slicer[standalone]==2.0.0"
fi
"$PY" - <<'PYEOF'
import importlib.metadata as m
print("slicer-core", m.version("slicer-core"), "vtk", m.version("vtk"), "trame-slicer", m.version("trame-slicer"))
PYEOF
