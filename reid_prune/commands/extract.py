"""``reid-prune extract``: write L2-normalised features of a folder or list of images."""

from __future__ import annotations

import argparse

from .argtypes import add_compute_args, int_at_least

NAME = "extract"
SUMMARY = "write L2-normalised features of a folder or list of images"
DESCRIPTION = """\
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
"""
CONFIG, QUIET, DISTRIBUTED, INTERRUPTED = False, True, False, None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="CKPT", help="a .pt file written by reid-prune")
    parser.add_argument("--images", required=True, metavar="DIR_OR_LIST",
                        help="a folder (searched recursively) or a text file with one image path per line")
    parser.add_argument("--output", required=True, metavar="FEATS.npy",
                        help="features file; the paths go beside it as FEATS.paths.txt")
    parser.add_argument("--batch-size", type=int_at_least(1), default=64, metavar="B",
                        help="images per batch (default: 64)")
    parser.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"),
                        help="input height and width (default: the checkpoint's training size, else 256 128)")
    parser.add_argument("--flip", action="store_true", help="average each feature with its mirror image's")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N")
    parser.add_argument("--workers", type=int_at_least(0), default=2, help="image decoding processes (default: 2)")
    add_compute_args(parser, "the forward passes")


def run(args: argparse.Namespace) -> int:
    from ..jobs.extract import extract_checkpoint

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
