#!/usr/bin/env bash
# First command of the README: install forgetless and run the recommended job on the bundled model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh trainer
exec .venv/bin/forgetless run examples/recommended.yaml --workdir runs/recommended "$@"
