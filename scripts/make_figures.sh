#!/usr/bin/env bash
# Make every picture of docs/visualize.md from a trained CUHK03 ResNet-18 run.
#
# Usage: bash scripts/make_figures.sh CHECKPOINT_DIR
#   CHECKPOINT_DIR: a folder written by `reid-prune train` (last.pt, metrics.jsonl), e.g.
#     reid-prune train --config configs/cuhk03_market_resnet18_cpu.yaml --output runs/cuhk03_r18   # ~20 min, 2 cores
#     bash scripts/make_figures.sh runs/cuhk03_r18                                                   # ~5 min, 2 cores
#
# Writes the intermediate outputs into CHECKPOINT_DIR/figures-TIME/ and copies into docs/figures/:
# visrank_summary.png, sensitivity.png, widths.png, curves.png (each kept under 300 KB), and the
# sensitivity.csv and layer_rates.yaml behind them.
# Environment (defaults in brackets): CONFIG [configs/cuhk03_market_resnet18_cpu.yaml], FIGURES [docs/figures],
# REID_PRUNE [.venv/bin/reid-prune], PYTHON [.venv/bin/python], SET [extra --set flags, e.g. for a smoke run],
# SUBSET_IDS [100: test identities of the sensitivity sweep], RATES [0.1,0.3,0.5,0.7,0.9].
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:?usage: bash scripts/make_figures.sh CHECKPOINT_DIR (a reid-prune train folder with last.pt and metrics.jsonl)}
CONFIG=${CONFIG:-configs/cuhk03_market_resnet18_cpu.yaml}
FIGURES=${FIGURES:-docs/figures}
REID_PRUNE=${REID_PRUNE:-.venv/bin/reid-prune}
PYTHON=${PYTHON:-.venv/bin/python}
SET=${SET:-}
SUBSET_IDS=${SUBSET_IDS:-100}
RATES=${RATES:-0.1,0.3,0.5,0.7,0.9}
for f in "$RUN/last.pt" "$RUN/metrics.jsonl" "$CONFIG"; do
  [ -f "$f" ] || { echo "make_figures.sh: $f does not exist; train first (see the usage at the top of $0)" >&2; exit 2; }
done
WORK="$RUN/figures-$(date +%Y%m%d-%H%M%S)"
ARGS=(--config "$CONFIG" --checkpoint "$RUN/last.pt")
# shellcheck disable=SC2206  # SET holds flags to split
EXTRA=($SET)
mkdir -p "$FIGURES"
started=$SECONDS

# 1. Ranked retrieval: 8 random queries (seed 0), top 8 of the whole test split.
$REID_PRUNE visrank "${ARGS[@]}" "${EXTRA[@]}" --queries 8 --topk 8 --seed 0 --output "$WORK/visrank"
# 2. Sensitivity of every group at scope all (HaoLi, no fine-tuning) on SUBSET_IDS test identities, and the
#    per-group rates that keep half the MACs.
$REID_PRUNE sensitivity "${ARGS[@]}" "${EXTRA[@]}" --method haoli --scope all --rates "$RATES" \
    --subset-ids "$SUBSET_IDS" --seed 0 --target-macs 0.5 --output "$WORK/sensitivity"
# 3. Prune with those rates (no fine-tuning): widths.png beside report.json.
$REID_PRUNE prune "${ARGS[@]}" "${EXTRA[@]}" --method haoli --scope all \
    --layer-rates "$WORK/sensitivity/layer_rates.yaml" --output "$WORK/pruned"
# 4. Learning curves of the training run.
$REID_PRUNE plot "$RUN" --output "$WORK/curves.png"

cp "$WORK/visrank/summary.png" "$FIGURES/visrank_summary.png"
cp "$WORK/sensitivity/sensitivity.png" "$WORK/sensitivity/sensitivity.csv" "$WORK/sensitivity/layer_rates.yaml" "$FIGURES/"
cp "$WORK/pruned/widths.png" "$WORK/curves.png" "$FIGURES/"
# Photos make big PNGs: fewer colours, then smaller, until each file is under 300 KB (the docs' limit), or fail.
"$PYTHON" - "$FIGURES" <<'EOF'
import sys
from pathlib import Path
from PIL import Image

LIMIT = 300 * 1024
for name in ("visrank_summary.png", "sensitivity.png", "widths.png", "curves.png"):
    path = Path(sys.argv[1]) / name
    original = Image.open(path).convert("RGB")
    for colours, scale in ((256, 1.0), (128, 1.0), (64, 1.0), (128, 0.8), (128, 0.65)):
        if path.stat().st_size <= LIMIT:
            break
        size = (round(original.width * scale), round(original.height * scale))
        image = original.resize(size, Image.Resampling.LANCZOS) if scale < 1 else original
        image.quantize(colours, dither=Image.Dither.NONE).save(path, optimize=True)
    kb = path.stat().st_size / 1024
    print(f"{path}: {Image.open(path).width}x{Image.open(path).height}, {kb:.0f} KB")
    if kb > 300:
        sys.exit(f"make_figures.sh: {path} is still {kb:.0f} KB; draw fewer queries (--queries) or matches (--topk)")
EOF
echo "wrote $FIGURES/ from $RUN in $(( (SECONDS - started) / 60 )) min $(( (SECONDS - started) % 60 )) s (work files: $WORK)"
