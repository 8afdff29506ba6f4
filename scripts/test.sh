#!/usr/bin/env bash
# Second command of the README (and what CI runs): install the test dependencies and tools, run the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh trainer,dev,lmeval,mlflow,smollm2
bash scripts/install-tools.sh
export FORGETLESS_REQUIRE_TOOLS=1
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
exec .venv/bin/python -m pytest "$@"
