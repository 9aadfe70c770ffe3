#!/usr/bin/env bash
# Create .venv (if missing) and install the pinned torch build plus reid-prune (editable, with test tools).
# Usage: bash scripts/setup.sh [EXTRA ...]   e.g. bash scripts/setup.sh plot
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
extras="test"
for e in "$@"; do extras="$extras,$e"; done
# torch/torchvision are pinned here (the versions this project is tested with); pyproject keeps ranges for users.
.venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[$extras]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import torch, torchvision, reid_prune; print(f'reid-prune {reid_prune.__version__} ready: torch {torch.__version__}, torchvision {torchvision.__version__}')"
