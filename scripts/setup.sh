#!/usr/bin/env bash
# Create .venv and install the engine, CLI, training and test dependencies.
# torch is pinned (constraints.txt) so pip takes the CPU wheel, not multi-GB CUDA builds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.liverct-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -c constraints.txt "torch==2.13.0"
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[training,test,mrml,webtest,dicom,cluster]"
  echo "$want" > "$stamp"
fi
