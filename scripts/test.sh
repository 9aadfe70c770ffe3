#!/usr/bin/env bash
# Command 2 of the README: set up, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh export plot bench interop tensorboard   # the ONNX export, plotting, Torch-Pruning anchor,
                                                              # torchreid equivalence and TensorBoard tests run too
.venv/bin/python -m pytest "$@"
