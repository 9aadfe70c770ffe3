"""``reid-prune import``: a torchreid, fast-reid or reid-strong-baseline ResNet as a reid-prune checkpoint."""

from __future__ import annotations

import argparse

from ..backbone import POOLINGS
from .report import format_table

NAME = "import"
SUMMARY = "import a ResNet re-ID model of torchreid, fast-reid or reid-strong-baseline"
DESCRIPTION = """\
Reads another tool's checkpoint with weights only (torchreid's {'state_dict':
...} files and model-zoo state_dicts, fast-reid's {'model': ...}, reid-strong-
baseline's state_dicts; 'module.' prefixes removed), maps its ResNet-18/34/50
re-ID model onto reid-prune's network (trunk, stem, last stride, pooling, BNNeck,
fc embedding, classifier) and writes a checkpoint that eval, prune, export and
extract take like any other. Its features equal the tool's own (tests/test_interop.py).
Strides are not stored in weights: the last stride is the tool's default unless
--last-stride says otherwise, and the output says which it took. Other backbones
(IBN, SE, non-local, OSNet, ResNet-101), unknown or missing keys and shape
mismatches are refused, naming the keys; nothing is written then. Prints the
--set flags that make a config match the model. See docs/interop.md.

examples:
  reid-prune import --from torchreid log/resnet50/model/model.pth.tar-60 --output runs/tr50.pt
  reid-prune import --from fastreid logs/market1501/bagtricks_R50/model_final.pth --output runs/fr50.pt
  reid-prune import --from bot resnet50_model_120.pth --output runs/bot50.pt
  reid-prune prune --config configs/market1501_resnet50.yaml --checkpoint runs/bot50.pt \\
      --method fpgm --target-macs 0.5 --finetune-epochs 10 --output runs/bot50-fpgm50
"""
CONFIG, QUIET, DISTRIBUTED, INTERRUPTED = False, False, False, None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="source", required=True, choices=("torchreid", "fastreid", "bot"),
                        help="the tool that trained it (bot: reid-strong-baseline, the 'bag of tricks')")
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="the tool's .pth / .pt / .pth.tar file")
    parser.add_argument("--output", required=True, metavar="FILE", help="the reid-prune checkpoint to write")
    parser.add_argument("--last-stride", type=int, choices=(1, 2),
                        help="the last stage's stride, when it is not the tool's default "
                             "(torchreid 2, 1 with an fc layer; fast-reid and reid-strong-baseline 1)")
    parser.add_argument("--pooling", choices=POOLINGS,
                        help="the global pooling, when the file cannot tell (default: avg, or gem when the file "
                             "holds a learnt GeM exponent)")


def run(args: argparse.Namespace) -> int:
    from ..interop import import_checkpoint

    imported = import_checkpoint(args.checkpoint, args.source, args.output, last_stride=args.last_stride,
                                 pooling=args.pooling)
    config = imported.model_config
    classes = config["num_classes"]
    rows = [["read", imported.container], ["network", config["arch"]],
            ["stem", config.get("stem", "torchvision")], ["last stride", config["last_stride"]],
            ["pooling", config["pooling"]], ["neck", config["neck"]],
            ["embedding", config["embedding_dim"] or "none"],
            ["identity classifier", f"{classes} identities" if classes else "none"],
            ["parameters", f"{sum(p.numel() for p in imported.model.parameters()):,}"]]
    print(f"\nimported {args.checkpoint} ({args.source}) -> {imported.output}")
    print(format_table(("what", "value"), rows))
    for note in imported.notes:
        print(f"note: {note}")
    flags = " ".join(f"--set {o}" for o in imported.config_overrides())
    print(f"\nwith a config, evaluate or prune it with these model keys (or put them in the YAML):\n  {flags}")
    return 0
