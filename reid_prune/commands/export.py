"""``reid-prune export``: export a checkpoint (pruned or not) to ONNX, check parity, compare CPU latency."""

from __future__ import annotations

import argparse

from .argtypes import add_compute_args, int_at_least, positive_number
from .common import error
from .report import format_table

NAME = "export"
SUMMARY = "export a checkpoint (pruned or not) to ONNX, check parity, compare CPU latency"
DESCRIPTION = """\
Writes the model as ONNX (input 'images' Bx3xHxW normalised as in training,
output 'features', the retrieval feature before L2 normalisation), atomically.
Before the file is put in place, onnxruntime runs it on random inputs (and on
up to 16 images of --images DIR): the features must match PyTorch's within
--tolerance, otherwise nothing is written and the exit code is 1. Prints the
file size and the CPU latency per image of PyTorch and onnxruntime at batch 1
(PyTorch in fp32, and in bf16 autocast too on a CPU with native bf16 unless
--amp off). Needs the export extra: pip install -e '.[export]' in this
repository, or bash scripts/setup.sh export. See docs/deploy.md.

examples:
  reid-prune export --checkpoint runs/demo/best.pt --format onnx --output model.onnx
  reid-prune export --checkpoint runs/demo/fpgm50/pruned.pt --output fpgm50.onnx --input-size 256 128 \\
      --dynamic-batch --images data/synthetic/query
"""
CONFIG, QUIET, DISTRIBUTED, INTERRUPTED = False, False, False, None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="CKPT", help="a .pt file written by reid-prune")
    parser.add_argument("--format", default="onnx", choices=("onnx",), help="export format (default: onnx)")
    parser.add_argument("--output", required=True, metavar="FILE", help="the .onnx file to write")
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"),
                        help="input height and width (default: the checkpoint's training size, else 256 128)")
    parser.add_argument("--dynamic-batch", action="store_true", help="leave the batch size free (default: 1)")
    parser.add_argument("--images", metavar="DIR_OR_LIST", help="also check parity on up to 16 of these images")
    parser.add_argument("--tolerance", type=positive_number, default=1e-4,
                        help="largest allowed |PyTorch - onnxruntime| on a feature value (default: 1e-4)")
    parser.add_argument("--threads", type=int_at_least(1), metavar="N",
                        help="CPU threads of both runtimes when timing (default: PyTorch's default)")
    add_compute_args(parser, "the PyTorch latency (fp32 is always timed; the ONNX file is fp32)", cpu_only=True)


def run(args: argparse.Namespace) -> int:
    from ..jobs.export import MissingExtraError, ParityError, export_checkpoint
    from .report import human

    try:
        report = export_checkpoint(args.checkpoint, args.output, fmt=args.format, input_size=args.input_size,
                                   dynamic_batch=args.dynamic_batch, images=args.images, tolerance=args.tolerance,
                                   threads=args.threads, amp=args.amp, channels_last=args.channels_last)
    except MissingExtraError as exc:
        error(args, exc)
        return 2
    except ParityError as exc:
        error(args, exc)
        return 1
    height, width = report["input_size"]
    batch = "B" if report["dynamic_batch"] else "1"
    parity = report["parity"]
    rows = [["parity, random inputs (4)", f"max |diff| {parity['random']:.1e} (tolerance {report['tolerance']:.0e})"]]
    if parity["images"] is None:
        rows.append(["parity, real images", "not checked: pass --images DIR to check on real images"])
    else:
        rows.append([f"parity, real images ({parity['num_images']})",
                     f"max |diff| {parity['images']:.1e} (tolerance {report['tolerance']:.0e})"])
    rows.append(["file size", f"{human(report['size_bytes'])}B"])
    latency = report["latency_ms"]
    threads = f"{report['threads']} thread{'s' if report['threads'] > 1 else ''}"
    layout = report["latency_setting"]["memory_format"]
    rows.append([f"CPU latency, batch 1, {threads}",
                 f"PyTorch fp32 {layout} {latency['pytorch']:.2f} ms, onnxruntime fp32 {latency['onnxruntime']:.2f} ms "
                 f"(PyTorch / onnxruntime = {latency['pytorch'] / latency['onnxruntime']:.2f})"])
    if "pytorch_bf16" in latency:
        rows.append([f"CPU latency, batch 1, {threads}",
                     f"PyTorch bf16 autocast {layout} {latency['pytorch_bf16']:.2f} ms (not what the ONNX file runs)"])
    print(f"\nexported {args.checkpoint} -> {report['output']}: input 'images' ({batch}, 3, {height}, {width})"
          f"{', B free' if report['dynamic_batch'] else ''}, output 'features' (not L2-normalised)")
    print(format_table(("check", "result"), rows))
    return 0
