#!/usr/bin/env bash
# Command 1 of the README: set up, then train and evaluate ResNet-18 on the generated synthetic dataset.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out="runs/demo-$(date +%Y%m%d-%H%M%S)"
.venv/bin/reid-prune train --config configs/demo.yaml --output "$out"
.venv/bin/reid-prune eval --config configs/demo.yaml --checkpoint "$out/best.pt" --json "$out/eval.json"
