#!/usr/bin/env bash
# Command 2 of the README: set up, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh export plot bench   # the ONNX export, plotting and Torch-Pruning anchor tests run too
.venv/bin/python -m pytest "$@"
