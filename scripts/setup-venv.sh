#!/usr/bin/env bash
# Create .venv and install forgetless with the given extras (default: trainer).
# torch is pinned to the CPU build this project is tested with; an unpinned torch pulls GBs of CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-trainer}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="${FORGETLESS_TORCH_VERSION:-2.13.0}"

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade pip 2>&1 | grep -v "^WARNING" || true
"${PIP[@]}" install "torch==${TORCH_VERSION}" 2>&1 | grep -v "^WARNING" || true
.venv/bin/python -c "import torch" # fail loudly if torch did not install
DS_BUILD_OPS=0 "${PIP[@]}" install -e ".[${EXTRAS}]" 2>&1 | grep -v "^WARNING" || true
.venv/bin/python -c "import forgetless, forgetless_trainer, forgetless_operator"
echo "forgetless installed in .venv (extras: ${EXTRAS})"
