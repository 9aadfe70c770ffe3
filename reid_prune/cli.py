"""The ``reid-prune`` command line. Thin: parse arguments, load the config, call the library."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Callable, Sequence

from .analysis import commands as analysis_commands
from .argtypes import PRECISION_HELP, add_compute_args, int_at_least, positive_number, precision_help
from .bench import add_bench_command
from .config import ConfigError, load_config
from .outputs import check_output_dir, check_output_file
from .prune_command import PRUNE_DESCRIPTION, PRUNE_SUMMARY, add_prune_arguments, cmd_prune
from .report import format_table, metric_rows

# Mistakes a user can fix: reported in one line with exit code 2, without a traceback.
USER_ERRORS = (ConfigError, ValueError, FileNotFoundError, FileExistsError, NotImplementedError)
# Commands that may run as several processes under torchrun; the others refuse to.
DISTRIBUTED_COMMANDS = ("train", "prune", "bench")
# What a Ctrl-C leaves, per command (None: the commands that write their files only at the end).
INTERRUPTED = {
    "train": "checkpoints written so far are kept (once an epoch has finished, the same command with --resume "
             "continues from it; before that, start again)",
    "bench": "finished models are kept (run the same command again to continue)",
    None: "nothing was written (run the command again to start over)",
}


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line naming the command, like errors, instead of Python's file:line form."""
    print(f"reid-prune: warning: {message}", file=sys.stderr)


def _add_config_args(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    parser.add_argument("--config", required=required, metavar="YAML",
                        help="YAML config; keys it omits take the defaults in reid_prune/config.py")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key, e.g. --set train.epochs=5 (repeatable)")


def _config(args: argparse.Namespace):
    return load_config(args.config, args.overrides)


def _print_report(title: str, report: dict) -> None:
    print(f"\n{title}")
    print(format_table(("metric", "value"), metric_rows(report)))


def _error(args: argparse.Namespace, exc: BaseException) -> None:
    print(f"reid-prune {args.command}: error: {exc}", file=sys.stderr)


def cmd_train(args: argparse.Namespace) -> int:
    from .distributed import is_main_process
    from .engine import train

    cfg = _config(args)
    summary = train(cfg, output=args.output, resume=args.resume, progress=not args.quiet)
    if not is_main_process():
        return 0
    report = {**summary["last"], **summary["complexity"], "precision": summary["precision"],
              "memory_format": summary["memory_format"]}
    _print_report(f"trained {cfg.model.arch} -> {summary['output']} (best mAP {summary['best']['mAP']:.2f}% "
                  f"at epoch {summary['best']['epoch']})", report)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .engine import evaluate_checkpoint

    cfg = _config(args)
    if args.json:
        check_output_file(args.json, "--json", inputs=[args.checkpoint])
    report = evaluate_checkpoint(cfg, args.checkpoint, progress=not args.quiet)
    _print_report(f"evaluation of {args.checkpoint} on {report['dataset']}", report)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import MissingExtraError, ParityError, export_checkpoint
    from .report import human

    try:
        report = export_checkpoint(args.checkpoint, args.output, fmt=args.format, input_size=args.input_size,
                                   dynamic_batch=args.dynamic_batch, images=args.images, tolerance=args.tolerance,
                                   threads=args.threads, amp=args.amp, channels_last=args.channels_last)
    except MissingExtraError as exc:
        _error(args, exc)
        return 2
    except ParityError as exc:
        _error(args, exc)
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


def cmd_extract(args: argparse.Namespace) -> int:
    from .extract import extract_checkpoint

    report = extract_checkpoint(args.checkpoint, args.images, args.output, batch_size=args.batch_size,
                                input_size=args.input_size, flip=args.flip, device=args.device, amp=args.amp,
                                channels_last=args.channels_last, workers=args.workers, progress=not args.quiet)
    height, width = report["input_size"]
    skipped = len(report["skipped"])
    print(f"wrote {report['output']} ({report['num_images']} x {report['dim']} float32, L2-normalised, "
          f"input {height}x{width}, computed in {report['precision']}, {report['memory_format']}) "
          f"and {report['paths_file']}"
          + (f"; skipped {skipped} unreadable image{'s' if skipped > 1 else ''}" if skipped else ""))
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from .data import build_dataset, generate_synthetic

    check_output_dir(args.output, "--output")
    root = generate_synthetic(args.output, num_ids=args.ids, num_test_ids=args.test_ids, seed=args.seed,
                              overwrite=args.overwrite)
    print(build_dataset("market_layout", root, name="synthetic").summary())
    print(f"wrote {root}")
    return 0


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str, str]] = {
    "train": (cmd_train, "train a re-ID model from a YAML config", """\
Trains the configured backbone with the configured losses, evaluating every
train.eval_every epochs. The run folder gets config.yaml (resolved), last.pt,
best.pt (chosen by mAP) and metrics.jsonl (one line per epoch).

Under torchrun it trains on several GPUs (or CPU processes) with
DistributedDataParallel; the global batch is data.p x data.k x processes
(see docs/multi_gpu.md).

examples:
  reid-prune train --config configs/demo.yaml --output runs/demo
  reid-prune train --config configs/cuhk03_market_resnet18_cpu.yaml --set train.epochs=5
  reid-prune train --config configs/demo.yaml --output runs/demo --resume   # continue after a stop
  torchrun --nproc_per_node=4 -m reid_prune train --config configs/market1501_resnet50.yaml \\
      --set train.sync_bn=true --output runs/market-4gpu
""" + PRECISION_HELP),
    "eval": (cmd_eval, "evaluate a checkpoint: mAP, CMC, mINP, params, MACs, latency", """\
Evaluates a checkpoint (pruned or not) on the query/gallery split of the
config's dataset under the Market-1501 protocol, then measures parameters,
MACs (FLOPs = 2 x MACs) and latency per image.

examples:
  reid-prune eval --config configs/demo.yaml --checkpoint runs/demo/best.pt
  reid-prune eval --config configs/demo.yaml --checkpoint runs/demo/best.pt --json report.json
""" + PRECISION_HELP),
    "prune": (cmd_prune, PRUNE_SUMMARY, PRUNE_DESCRIPTION + PRECISION_HELP),
    "export": (cmd_export, "export a checkpoint (pruned or not) to ONNX, check parity, compare CPU latency", """\
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
"""),
    "extract": (cmd_extract, "write L2-normalised features of a folder or list of images", """\
Runs a checkpoint (pruned or not) over your images and writes OUTPUT.npy,
(N, D) float32 L2-normalised features (cosine similarity = dot product), and
OUTPUT.paths.txt, the N image paths in the same order. A folder is searched
recursively for .jpg/.jpeg/.png/.bmp/.webp/.tif/.tiff/.ppm files; a list is a
text file with one path per line (relative to the list's folder). Unreadable
images are skipped with a warning naming each one. Images are resized to the
checkpoint's training size unless --input-size is given. See docs/deploy.md.

examples:
  reid-prune extract --checkpoint runs/demo/best.pt --images data/synthetic/query --output feats.npy
  reid-prune extract --checkpoint pruned.pt --images my_list.txt --output out/feats.npy --batch-size 128 --flip
"""),
    "synth": (cmd_synth, "write the synthetic re-ID dataset in Market-1501 layout", """\
Writes a learnable synthetic person re-ID dataset (bounding_box_train,
bounding_box_test, query) to use with data.dataset=market_layout.

example:
  reid-prune synth --output data/synthetic --ids 60 --seed 0
"""),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reid-prune",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train person re-ID feature extractors and make them cheap to run by structured pruning.",
        epilog="Run 'reid-prune COMMAND --help' for a command's options and examples.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (func, summary, description) in {**COMMANDS, **analysis_commands.COMMANDS}.items():
        p = sub.add_parser(name, help=summary, description=f"{summary}.\n\n{description}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(func=func)
        if name not in ("synth", "export", "extract", "plot"):
            _add_config_args(p)
        if name not in ("synth", "export", "plot"):
            p.add_argument("--quiet", action="store_true", help="no progress bars or dataset summaries")
    add_bench_command(sub)
    sub.choices["bench"].description += precision_help("base.")  # a bench file sets them under base.train
    analysis_commands.add_arguments(sub.choices)
    p_train, p_eval, p_prune, p_export, p_extract, p_synth = (
        sub.choices[n] for n in ("train", "eval", "prune", "export", "extract", "synth"))
    add_prune_arguments(p_prune)
    p_train.add_argument("--output", metavar="DIR", help="run folder (default: the config's output key)")
    p_train.add_argument("--resume", action="store_true", help="continue the run in the output folder from last.pt")
    p_eval.add_argument("--checkpoint", required=True, metavar="CKPT", help="a .pt file written by reid-prune")
    p_eval.add_argument("--json", metavar="OUT", help="also write the report as JSON")
    p_export.add_argument("--checkpoint", required=True, metavar="CKPT", help="a .pt file written by reid-prune")
    p_export.add_argument("--format", default="onnx", choices=("onnx",), help="export format (default: onnx)")
    p_export.add_argument("--output", required=True, metavar="FILE", help="the .onnx file to write")
    p_export.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"),
                          help="input height and width (default: the checkpoint's training size, else 256 128)")
    p_export.add_argument("--dynamic-batch", action="store_true", help="leave the batch size free (default: 1)")
    p_export.add_argument("--images", metavar="DIR_OR_LIST", help="also check parity on up to 16 of these images")
    p_export.add_argument("--tolerance", type=positive_number, default=1e-4,
                          help="largest allowed |PyTorch - onnxruntime| on a feature value (default: 1e-4)")
    p_export.add_argument("--threads", type=int_at_least(1), metavar="N",
                          help="CPU threads of both runtimes when timing (default: PyTorch's default)")
    p_extract.add_argument("--checkpoint", required=True, metavar="CKPT", help="a .pt file written by reid-prune")
    p_extract.add_argument("--images", required=True, metavar="DIR_OR_LIST",
                           help="a folder (searched recursively) or a text file with one image path per line")
    p_extract.add_argument("--output", required=True, metavar="FEATS.npy",
                           help="features file; the paths go beside it as FEATS.paths.txt")
    p_extract.add_argument("--batch-size", type=int_at_least(1), default=64, metavar="B",
                           help="images per batch (default: 64)")
    p_extract.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"),
                           help="input height and width (default: the checkpoint's training size, else 256 128)")
    p_extract.add_argument("--flip", action="store_true", help="average each feature with its mirror image's")
    p_extract.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N")
    p_extract.add_argument("--workers", type=int_at_least(0), default=2, help="image decoding processes (default: 2)")
    add_compute_args(p_extract, "the forward passes")
    add_compute_args(p_export, "the PyTorch latency (fp32 is always timed; the ONNX file is fp32)", cpu_only=True)
    p_synth.add_argument("--output", required=True, metavar="DIR", help="folder to create")
    p_synth.add_argument("--ids", type=int_at_least(2), default=60, help="training identities (default: 60)")
    p_synth.add_argument("--test-ids", type=int_at_least(1), default=30,
                         help="test identities, query + gallery (default: 30)")
    p_synth.add_argument("--seed", type=int_at_least(0), default=0,
                         help="random seed; the same seed gives the same files (default: 0)")
    p_synth.add_argument("--overwrite", action="store_true",
                         help="replace a dataset written by an earlier synth (never any other folder)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from .distributed import env_world_size, process_group_from_env

        if env_world_size() > 1 and args.command not in DISTRIBUTED_COMMANDS:
            raise ValueError(f"{args.command} runs as one process; start it without torchrun "
                             f"(torchrun is for {', '.join(DISTRIBUTED_COMMANDS[:-1])} and {DISTRIBUTED_COMMANDS[-1]})")
        with process_group_from_env(), warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return args.func(args)
    except USER_ERRORS as exc:
        _error(args, exc)
        return 2
    except KeyboardInterrupt:
        print(f"\nreid-prune {args.command}: interrupted; {INTERRUPTED.get(args.command, INTERRUPTED[None])}",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
