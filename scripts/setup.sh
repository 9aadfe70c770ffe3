#!/usr/bin/env bash
# Create .venv (if missing) and install the pinned torch build plus reid-prune (editable, with test tools).
# Usage: bash scripts/setup.sh [EXTRA ...]   e.g. bash scripts/setup.sh plot
# Extras (pyproject.toml): plot, export, bench, interop (torchreid, for its equivalence tests), tensorboard.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
extras="test"
for e in "$@"; do extras="$extras,$e"; done
pip_install() {
  # Only the harmless "WARNING: Location" lines are filtered out. grep -v exits 1 when it has nothing
  # left to print (the usual case with --quiet), so its status is ignored; with pipefail the pipeline
  # then has pip's status, and a failing pip stops this script (set -e) with pip's exit code.
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "$@" 2>&1 \
    | { grep -v "^WARNING: Location" || true; }
}
# torch/torchvision are pinned here (the versions this project is tested with); pyproject keeps ranges for users.
pip_install "torch==2.14.1" "torchvision==0.29.1"
pip_install -e ".[$extras]"
.venv/bin/python -c "import torch, torchvision, reid_prune; print(f'reid-prune {reid_prune.__version__} ready: torch {torch.__version__}, torchvision {torchvision.__version__}')"
