"""Images per second for training and feature extraction: a bare PyTorch loop against our Trainer, in one run.

Three tables, every ratio taken inside this one run:

1. **Compute**, per model (ResNet-18, ResNet-50 at 128x64, ResNet-50 pruned to 50% of its MACs by
   HaoLi) and setting (fp32 / bf16 autocast x NCHW / channels-last): training images/s of a bare loop
   (the model, batch-hard triplet + label-smoothed cross-entropy written out here, Adam; no trainer,
   no hooks) and of :class:`reid_prune.engine.Trainer` (``train_epoch``: schedule, hooks, logging),
   both reading the same P x K loader over decoded images; then extraction images/s of a bare
   ``model(x)`` loop and of :func:`reid_prune.evaluation.extract_features`. The settings and the two
   implementations run in turns, ``--rounds`` times (median), so a change of load hits them alike.
2. **Defaults**: the Trainer and ``extract_features`` as configured before issue 13 (fp32, NCHW, JPEGs
   decoded at every step) against the new defaults (``train.amp=auto``, ``train.channels_last=auto``,
   ``data.cache=auto``) on this machine.
3. **Data pipeline**: milliseconds of CPU per batch spent decoding JPEGs and transforming (one
   process), from disk and from the decoded-image cache, and their share of a default training step.

    python scripts/bench_train.py                      # the full run: set the machine aside (~1 h on 2 cores)
    OMP_NUM_THREADS=1 python scripts/bench_train.py --quick   # seconds per model: checks that it runs
    python scripts/bench_train.py --threads 2 --json runs/bench_train.json
    python scripts/bench_train.py --tables defaults,pipeline       # in parts: each table's ratios are its own
    python scripts/bench_train.py --tables compute --models "ResNet-50 pruned"

Without ``--data`` it reads ../shared/data/cuhk03_market beside the repository, or generates the
synthetic dataset when that folder is absent.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

import reid_prune
from reid_prune import build_model
from reid_prune.config import load_config
from reid_prune.data import build_eval_loader, build_train_loader, build_transforms, decode_images
from reid_prune.engine import Trainer
from reid_prune.jobs.wiring import make_eval_loaders, make_train_loader, prepare_dataset
from reid_prune.evaluation import complexity, extract_features
from reid_prune.precision import ComputeSettings, cpu_bf16_flags
from reid_prune.commands.report import format_table

REPO = Path(__file__).resolve().parents[1]
SIZE = (128, 64)
SETTINGS = [("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)]


def batch_hard_loss(feats: torch.Tensor, logits: torch.Tensor, pids: torch.Tensor, margin: float = 0.3) -> torch.Tensor:
    """Batch-hard triplet (euclidean, margin) + cross-entropy with label smoothing 0.1: the bare loop's own loss."""
    dist = torch.cdist(feats, feats).clamp(min=1e-12)
    same = pids[:, None] == pids[None, :]
    hardest_positive = dist.masked_fill(~same, 0).amax(dim=1)
    hardest_negative = dist.masked_fill(same, float("inf")).amin(dim=1)
    triplet = F.relu(hardest_positive - hardest_negative + margin).mean()
    return triplet + F.cross_entropy(logits, pids, label_smoothing=0.1)


class BareLoop:
    """The model, the loss above and Adam, at one precision and memory format."""

    def __init__(self, model: nn.Module, compute: ComputeSettings, lr: float) -> None:
        self.compute, self.model = compute, compute.place(model).train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr, weight_decay=5e-4)

    def run(self, loader, steps: int) -> None:
        for _, (images, pids, *_) in zip(range(steps), loader):
            with self.compute.autocast():
                feats, logits = self.model(self.compute.inputs(images), with_logits=True)
            loss = batch_hard_loss(feats.float(), logits.float(), pids)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()


class OurTrainer:
    """:class:`Trainer` at the same settings, run for ``steps`` batches per call of ``train_epoch``."""

    def __init__(self, cfg, model: nn.Module, loader) -> None:
        self.trainer = Trainer(cfg, model, model.build_config, loader, progress=False)
        self.epoch = 0

    def run(self, loader, steps: int) -> None:
        self.trainer.train_cfg.max_batches = steps
        self.trainer.train_epoch(self.epoch)
        self.epoch += 1


def bare_extract(model: nn.Module, loader, compute: ComputeSettings) -> None:
    with torch.inference_mode(), compute.autocast():
        for images, *_ in loader:
            model(compute.inputs(images))


def timed(run: Callable[[], None]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def in_turns(jobs: dict[str, Callable[[], None]], rounds: int, images: int) -> dict[str, float]:
    """Run every job once per round, in turns; images per second of each, median over the rounds."""
    seconds: dict[str, list[float]] = {name: [] for name in jobs}
    for _ in range(rounds):
        for name, job in jobs.items():
            seconds[name].append(timed(job))
    return {name: images / statistics.median(values) for name, values in seconds.items()}


def make_models(num_classes: int) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    models = {"ResNet-18": build_model("resnet18", num_classes=num_classes),
              "ResNet-50": build_model("resnet50", num_classes=num_classes)}
    pruned = reid_prune.prune(copy.deepcopy(models["ResNet-50"]).eval(), "haoli", target_macs=0.5, input_size=SIZE)
    kept = complexity(pruned, SIZE)["macs"] / complexity(models["ResNet-50"], SIZE)["macs"]
    models[f"ResNet-50 pruned ({kept:.0%} MACs)"] = pruned
    return models


def run_config(args, arch_config: dict[str, Any], precision: str, channels_last: bool | str, cache: bool | str):
    return load_config(None, [f"data.p={args.p}", f"data.k={args.k}", f"data.height={SIZE[0]}", f"data.width={SIZE[1]}",
                              f"data.workers={args.workers}", "data.transforms.random_erasing=0.0",
                              "loss.id_weight=1.0", "train.device=cpu", "train.lr=0.001",
                              f"train.amp={'off' if precision == 'fp32' else precision}",
                              f"train.channels_last={str(channels_last).lower()}", f"data.cache={str(cache).lower()}",
                              f"model.arch={arch_config['arch']}"])


def compute_table(args, dataset, models) -> list[list[str]]:
    """Table 1: train and extraction images/s per model and setting, bare loop against ours."""
    images = decode_images(dataset.train, *SIZE, workers=args.workers)
    transform = build_transforms(*SIZE, train=True, random_erasing=0.0)
    loader = build_train_loader(dataset.train, transform, p=args.p, k=args.k, seed=0, workers=args.workers,
                                images=images)
    probe = dataset.query[: args.eval_batches * args.eval_batch_size]
    eval_loader = build_eval_loader(probe, build_transforms(*SIZE, train=False), batch_size=args.eval_batch_size,
                                    workers=args.workers, images=decode_images(probe, *SIZE))
    rows = []
    for name, base in models.items():
        train_jobs, extract_jobs = {}, {}
        for precision, channels_last in SETTINGS:
            key = (precision, "channels_last" if channels_last else "NCHW")
            compute = ComputeSettings(torch.device("cpu"), precision, channels_last)
            bare = BareLoop(copy.deepcopy(base), compute, lr=1e-3)
            ours = OurTrainer(run_config(args, base.build_config, precision, channels_last, True), copy.deepcopy(base),
                              loader)
            for impl in (bare, ours):
                impl.run(loader, args.warmup)
            train_jobs[key + ("bare",)] = lambda impl=bare: impl.run(loader, args.steps)
            train_jobs[key + ("ours",)] = lambda impl=ours: impl.run(loader, args.steps)
            net = compute.place(copy.deepcopy(base)).eval()
            extract_jobs[key + ("bare",)] = lambda net=net, c=compute: bare_extract(net, eval_loader, c)
            extract_jobs[key + ("ours",)] = lambda net=net, c=compute: extract_features(
                net, eval_loader, precision=c.precision, channels_last=c.channels_last, progress=False)
        train = in_turns(train_jobs, args.rounds, args.steps * args.p * args.k)
        extract = in_turns(extract_jobs, args.rounds, len(probe))
        reference = train["fp32", "NCHW", "ours"]
        for precision, layout in ((p, "channels_last" if c else "NCHW") for p, c in SETTINGS):
            t_bare, t_ours = train[precision, layout, "bare"], train[precision, layout, "ours"]
            e_bare, e_ours = extract[precision, layout, "bare"], extract[precision, layout, "ours"]
            rows.append([name, precision, layout, f"{t_bare:.1f}", f"{t_ours:.1f}", f"{t_ours / t_bare:.3f}",
                         f"{t_ours / reference:.2f}", f"{e_bare:.1f}", f"{e_ours:.1f}", f"{e_ours / e_bare:.3f}"])
        print(format_table(COMPUTE_HEADERS, rows[-len(SETTINGS):]), flush=True)
    return rows


COMPUTE_HEADERS = ("model", "precision", "layout", "train bare img/s", "train Trainer img/s", "Trainer / bare",
                   "vs fp32 NCHW", "extract bare img/s", "extract ours img/s", "ours / bare")


def defaults_table(args, dataset, models) -> tuple[list[list[str]], float]:
    """Table 2: the Trainer and extraction as before (fp32, NCHW, decoding every step) against today's defaults.

    Also returns the seconds of a default training step of the first model, for table 3.
    """
    rows, first_step = [], 0.0
    probe = dataclasses.replace(dataset, query=dataset.query[: args.eval_batches * args.eval_batch_size], gallery=[])
    for name, base in models.items():
        train_jobs, extract_jobs, described = {}, {}, ""
        for label, (precision, channels_last, cache) in (("before", ("fp32", False, False)),
                                                         ("default", ("auto", "auto", "auto"))):
            cfg = run_config(args, base.build_config, precision, channels_last, cache)
            loader = make_train_loader(cfg, dataset)
            ours = OurTrainer(cfg, copy.deepcopy(base), loader)
            ours.run(loader, args.warmup)
            train_jobs[label] = lambda impl=ours, loader=loader: impl.run(loader, args.steps)
            compute = ComputeSettings.from_config(cfg.train, "cpu")
            query, _ = make_eval_loaders(cfg, probe)
            net = compute.place(copy.deepcopy(base)).eval()
            extract_jobs[label] = lambda net=net, c=compute, q=query: extract_features(
                net, q, precision=c.precision, channels_last=c.channels_last, progress=False)
            cached = loader.dataset.images is not None
            described = f"{compute.precision}, {compute.memory_format_name}, {'cached' if cached else 'decoding'}"
        train = in_turns(train_jobs, args.rounds, args.steps * args.p * args.k)
        extract = in_turns(extract_jobs, args.rounds, len(probe.query))
        first_step = first_step or args.p * args.k / train["default"]
        rows.append([name, f"{train['before']:.1f}", f"{train['default']:.1f}",
                     f"{train['default'] / train['before']:.2f}", f"{extract['before']:.1f}",
                     f"{extract['default']:.1f}", f"{extract['default'] / extract['before']:.2f}", described])
        print(format_table(DEFAULT_HEADERS, rows[-1:]), flush=True)
    return rows, first_step


DEFAULT_HEADERS = ("model", "train before img/s", "train default img/s", "ratio", "extract before img/s",
                   "extract default img/s", "ratio", "default here")


def pipeline_table(args, dataset, step_seconds: float) -> list[list[str]]:
    """Table 3: CPU ms per P x K batch of decoding + transforms in one process, from disk and from the cache."""
    transform = build_transforms(*SIZE, train=True, random_erasing=0.0)
    batches = max(args.steps, 3)
    rows = []
    for label, images in (("JPEG decode + transforms", None),
                          ("cache + transforms", decode_images(dataset.train, *SIZE, workers=args.workers))):
        loader = build_train_loader(dataset.train, transform, p=args.p, k=args.k, seed=0, workers=0, images=images)
        seconds = timed(lambda: [None for _, _ in zip(range(batches), loader)]) / batches
        rows.append([label, f"{seconds * 1000:.1f}", f"{seconds / (seconds + step_seconds):.1%}"])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="a Market-layout folder (default: ../shared/data/cuhk03_market, else synthetic)")
    parser.add_argument("--steps", type=int, default=8, help="timed training steps per turn (default: 8)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before timing (default: 2)")
    parser.add_argument("--rounds", type=int, default=3, help="turns of every job; the median is kept (default: 3)")
    parser.add_argument("--p", type=int, default=16, help="identities per batch (default: 16)")
    parser.add_argument("--k", type=int, default=4, help="images per identity (default: 4)")
    parser.add_argument("--eval-batch-size", type=int, default=64, help="extraction batch (default: 64)")
    parser.add_argument("--eval-batches", type=int, default=4, help="extraction batches per turn (default: 4)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader processes (default: 2)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--quick", action="store_true",
                        help="1 round of 2 steps of 4 x 2 images on 24 identities: checks that it runs")
    parser.add_argument("--tables", default="compute,defaults,pipeline",
                        help="comma-separated tables to run, of compute, defaults, pipeline (default: all three); "
                             "pipeline needs defaults, for the step it compares with")
    parser.add_argument("--models", default="",
                        help="run only the models whose name starts with one of these comma-separated prefixes, "
                             "e.g. 'ResNet-18,ResNet-50 pruned' (default: every model)")
    parser.add_argument("--json", metavar="OUT", help="also write the tables as JSON")
    args = parser.parse_args(argv)
    tables = [t.strip() for t in args.tables.split(",") if t.strip()]
    unknown = sorted(set(tables) - {"compute", "defaults", "pipeline"})
    if unknown or not tables:
        parser.error(f"--tables: expected some of compute, defaults, pipeline, got {args.tables!r}")
    if "pipeline" in tables and "defaults" not in tables:
        parser.error("--tables: pipeline compares with the default training step, so it needs defaults too")
    if args.quick:
        args.steps, args.warmup, args.rounds, args.p, args.k = 2, 1, 1, 4, 2
        args.eval_batch_size, args.eval_batches = 8, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    shared = REPO.parent / "shared" / "data" / "cuhk03_market"
    if args.data or shared.is_dir():
        data = ["data.dataset=market_layout", f"data.root={args.data or shared}"]
    else:
        data = ["data.dataset=synthetic"]
    dataset = prepare_dataset(load_config(None, data).data, verbose=False)
    if args.quick:  # a slice of the data, so that decoding it into the cache takes a moment
        dataset = dataclasses.replace(dataset, train=[s for s in dataset.train if s.pid < 24], query=dataset.query[:16])
    models = make_models(dataset.num_train_pids)
    prefixes = [m.strip() for m in args.models.split(",") if m.strip()]
    if prefixes:
        models = {name: m for name, m in models.items() if any(name.startswith(p) for p in prefixes)}
        if not models:
            parser.error(f"--models: no model starts with any of {prefixes}; the models are "
                         f"ResNet-18, ResNet-50 and 'ResNet-50 pruned (..% MACs)'")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, native bf16 flags: "
          f"{', '.join(cpu_bf16_flags()) or 'none'}; {dataset.name}: {len(dataset.train)} training images, input "
          f"{SIZE[0]}x{SIZE[1]}, batch {args.p} x {args.k}, {args.steps} steps x {args.rounds} rounds\n", flush=True)
    compute = compute_table(args, dataset, models) if "compute" in tables else []
    print(flush=True)
    defaults, step = defaults_table(args, dataset, models) if "defaults" in tables else ([], 0.0)
    pipeline = pipeline_table(args, dataset, step) if "pipeline" in tables else []
    if compute:
        print(f"\n1. compute (same cached loader for every row)\n{format_table(COMPUTE_HEADERS, compute)}")
    if defaults:
        print(f"\n2. before issue 13 against the defaults\n{format_table(DEFAULT_HEADERS, defaults)}")
    if pipeline:
        print(f"\n3. data pipeline, one process, CPU per batch of {args.p} x {args.k}; share of a default "
              f"{next(iter(models))} step ({step * 1000:.0f} ms)\n"
              f"{format_table(('pipeline', 'ms / batch', 'share of step'), pipeline)}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"compute": [dict(zip(COMPUTE_HEADERS, r)) for r in compute],
                                               "defaults": [dict(zip(DEFAULT_HEADERS, r)) for r in defaults],
                                               "pipeline": pipeline, "args": vars(args)}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
