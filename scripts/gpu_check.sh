#!/usr/bin/env bash
# The GPU check: what a session lent a CUDA machine runs at once. Under 8 minutes on one H200.
#
#   1. the tests that need CUDA (pytest -m cuda: fp16/bf16 autocast, channels-last, train -> eval -> prune
#      on the GPU, latency side by side, bf16/fp16 feature parity on real images);
#   2. a short real-data training: ResNet-50 at 256x128 on ../shared/data/cuhk03_market, autocast (auto);
#   3. a HaoLi prune to 50% of the MACs with fine-tuning;
#   4. eval of the pruned model (mAP, latency on the GPU, naming precision and memory format);
#   5. torchrun with one process: the CLI under torchrun, and an NCCL process group (all-reduce, one DDP step).
# It prints the training throughput of every epoch and each failure, goes on after a failure, and exits 1
# when any step failed. It refuses to run (exit 2) without CUDA, and on a usage mistake. Each step has a
# time limit (7.7 minutes in all; about 3 expected on an H200), so a hang is reported as a failure.
#
#   bash scripts/gpu_check.sh
#   bash scripts/gpu_check.sh --data /data/cuhk03_market --epochs 2 --output runs/gpu_check
#   bash scripts/gpu_check.sh --dry-run          # print the commands, run nothing (no GPU needed)
set -uo pipefail
cd "$(dirname "$0")/.."

usage() {
    cat <<'EOF'
usage: bash scripts/gpu_check.sh [--data DIR] [--output DIR] [--epochs N] [--python PY] [--dry-run]

  --data DIR     Market-layout folder to train on (default: ../shared/data/cuhk03_market)
  --output DIR   run folder, must not exist yet (default: runs/gpu_check-DATE-TIME)
  --epochs N     training epochs of step 2 (default: 3)
  --python PY    the interpreter with reid_prune installed (default: .venv/bin/python, else python3)
  --dry-run      print the commands and exit; needs no GPU
EOF
}

fail_usage() {
    echo "gpu_check: $1" >&2
    usage >&2
    exit 2
}

DATA=../shared/data/cuhk03_market
OUT="runs/gpu_check-$(date +%Y%m%d-%H%M%S)"
EPOCHS=3
PY=""
DRY=0
while [ $# -gt 0 ]; do
    case "$1" in
        --data|--output|--epochs|--python)
            [ $# -ge 2 ] || fail_usage "$1 needs a value"
            case "$1" in
                --data) DATA=$2 ;;
                --output) OUT=$2 ;;
                --epochs) EPOCHS=$2 ;;
                --python) PY=$2 ;;
            esac
            shift 2 ;;
        --dry-run) DRY=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) fail_usage "unknown argument '$1'" ;;
    esac
done
[[ "$EPOCHS" =~ ^[1-9][0-9]*$ ]] || fail_usage "--epochs must be a positive integer, got '$EPOCHS'"
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's reid_prune, installed or not

# Every command runs the same recipe: the CPU config's ResNet-18 recipe, made a ResNet-50 at 256x128 on CUDA.
CONFIG=(--config configs/cuhk03_market_resnet18_cpu.yaml --quiet
        --set "data.root=$DATA" --set model.arch=resnet50 --set model.zero_init_residual=true
        --set data.height=256 --set data.width=128 --set data.workers=8 --set train.device=cuda
        --set train.amp=auto --set train.channels_last=auto)
TRAIN=("$PY" -m reid_prune train "${CONFIG[@]}" --set "train.epochs=$EPOCHS" --set "train.milestones=[$EPOCHS]"
       --set "train.eval_every=$EPOCHS" --output "$OUT/train")
PRUNE=("$PY" -m reid_prune prune "${CONFIG[@]}" --checkpoint "$OUT/train/last.pt" --method haoli
       --target-macs 0.5 --finetune-epochs 1 --output "$OUT/prune")
EVAL=("$PY" -m reid_prune eval "${CONFIG[@]}" --checkpoint "$OUT/prune/pruned.pt" --json "$OUT/eval.json")
TORCHRUN=("$PY" -m torch.distributed.run --standalone --nproc_per_node=1 -m reid_prune train "${CONFIG[@]}"
          --set train.epochs=1 --set train.max_batches=5 --output "$OUT/torchrun")
NCCL=("$PY" -m torch.distributed.run --standalone --nproc_per_node=1 "$OUT/nccl_probe.py")
TESTS=("$PY" -m pytest -q -m cuda tests)

if [ "$DRY" = 1 ]; then
    for cmd in TESTS TRAIN PRUNE EVAL TORCHRUN NCCL; do
        declare -n parts=$cmd
        printf '%s:' "$cmd"
        printf ' %q' "${parts[@]}"
        printf '\n'
    done
    exit 0
fi

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "gpu_check: refusing to run: $PY sees no CUDA GPU (torch.cuda.is_available() is False);" \
         "run it on a machine lent a GPU (--dry-run lists the commands)" >&2
    exit 2
fi
[ -d "$DATA" ] || fail_usage "--data: folder '$DATA' does not exist"
[ -e "$OUT" ] && fail_usage "--output: '$OUT' exists; choose another folder"
mkdir -p "$OUT"

FAILED=()
step() {  # step NAME SECONDS COMMAND...: run, time, record a failure (a step past SECONDS is stopped)
    local name=$1 limit=$2
    shift 2
    echo "== $name"
    local start=$SECONDS
    timeout "$limit" "$@"
    local code=$?
    echo "== $name: $([ $code = 0 ] && echo ok || echo "FAILED (exit $code)") in $((SECONDS - start)) s"
    [ $code = 0 ] || FAILED+=("$name (exit $code)")
}

"$PY" -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, \
compute capability {p.major}.{p.minor}; torch {torch.__version__}")'
step "CUDA tests" 110 "${TESTS[@]}"
step "train ResNet-50 256x128, $EPOCHS epochs" 140 "${TRAIN[@]}"
if [ -f "$OUT/train/metrics.jsonl" ]; then
    "$PY" - "$OUT/train/metrics.jsonl" "$DATA" <<'EOF'
import json, sys
from reid_prune.data import build_dataset
images = len({s.pid for s in build_dataset("market_layout", sys.argv[2]).train}) // 16 * 16 * 4  # P16 x K4 per step
for line in open(sys.argv[1]):
    r = json.loads(line)
    note = f", then evaluation: mAP {r['mAP']:.1f}" if "mAP" in r else ""
    print(f"throughput epoch {r['epoch'] + 1}: {images / r['seconds']:.0f} images/s ({images} images in {r['seconds']:.1f} s{note})")
EOF
fi
step "prune HaoLi 50% MACs + 1 epoch fine-tuning" 80 "${PRUNE[@]}"
step "eval of the pruned model" 40 "${EVAL[@]}"
step "torchrun, 1 process, reid-prune train" 50 "${TORCHRUN[@]}"
cat > "$OUT/nccl_probe.py" <<'EOF'
"""One NCCL process group: a CUDA all-reduce and one DDP training step of a ResNet-50 ReIDNet."""
import torch
import torch.distributed as dist

from reid_prune import build_model
from reid_prune.distributed import local_rank

torch.cuda.set_device(local_rank())
dist.init_process_group("cpu:gloo,cuda:nccl")
value = torch.ones(4, device="cuda")
dist.all_reduce(value)
assert value.tolist() == [dist.get_world_size()] * 4, value
model = torch.nn.parallel.DistributedDataParallel(build_model("resnet50", num_classes=8).cuda(), device_ids=[local_rank()])
with torch.autocast("cuda", dtype=torch.bfloat16):
    feats, logits = model(torch.randn(8, 3, 256, 128, device="cuda"), with_logits=True)
    loss = torch.nn.functional.cross_entropy(logits.float(), torch.arange(8, device="cuda"))
loss.backward()
dist.barrier()
print(f"NCCL {torch.cuda.nccl.version()}: all-reduce and one DDP step on {dist.get_world_size()} GPU(s) ok")
dist.destroy_process_group()
EOF
step "torchrun, 1 process, NCCL all-reduce + DDP step" 40 "${NCCL[@]}"

echo
if [ ${#FAILED[@]} -eq 0 ]; then
    echo "gpu_check: every step passed; runs in $OUT"
    exit 0
fi
echo "gpu_check: ${#FAILED[@]} step(s) failed:" >&2
printf '  - %s\n' "${FAILED[@]}" >&2
exit 1
