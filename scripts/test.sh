#!/usr/bin/env bash
# README command 2: set up, then run the whole test suite (slow tests opt in with --runslow).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Browser tests need Debian chromium (installed here when root). They skip with a reason when the
# browser stack is missing, unless LIVERCT_REQUIRE_BROWSER=1 (.ci/run sets it): then they fail, and a
# failed install stops here.
if ! bash scripts/install_browser.sh; then
  if [ "${LIVERCT_REQUIRE_BROWSER:-0}" = 1 ]; then
    echo "error: browser install failed and LIVERCT_REQUIRE_BROWSER=1" >&2
    exit 1
  fi
  echo "warning: browser install failed; browser tests will skip" >&2
fi
# DICOMweb tests start a real Orthanc (Debian orthanc + orthanc-dicomweb, installed here when root). They
# skip with a reason when it is missing, unless LIVERCT_REQUIRE_ORTHANC=1 or CI=true: then they fail.
if ! bash scripts/install_orthanc.sh; then
  if [ "${LIVERCT_REQUIRE_ORTHANC:-0}" = 1 ]; then
    echo "error: Orthanc install failed and LIVERCT_REQUIRE_ORTHANC=1" >&2
    exit 1
  fi
  echo "warning: Orthanc install failed; DICOMweb tests will skip" >&2
fi
export QT_QPA_PLATFORM=offscreen
exec .venv/bin/python -m pytest -q -rs "$@"
