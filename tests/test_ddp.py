"""DistributedDataParallel on the CPU (gloo, 2 processes on 127.0.0.1): equality with one process, resume, pruners.

What the equality test compares. Under DDP each rank runs the model on its own
P x K batch, so batch-hard mining and BatchNorm batch statistics are per rank,
and the gradients are averaged. The matching single-process run is therefore not
a run with a 2P x K batch (that mines over all 2P identities and normalises over
the whole batch: the test checks it differs), but this one, written out below:
for each step, take the two ranks' batches (the same sampler with num_replicas=2),
run the model on each half separately, and step on the mean of the two halves'
losses. BatchNorm running statistics follow rank 0's half alone, because DDP
broadcasts rank 0's buffers before every forward pass. torch's SyncBatchNorm runs
on GPUs only, so train.sync_bn is covered only in part: the SyncBatchNorm copy the
Trainer trains through shares weights and statistics, and CPU ranks refuse it.

Gradients are then the same sums of the same per-half numbers (the 1/2 scaling is
exact in floating point): on one machine the weights come out bitwise equal
(observed difference 0.0). The stated tolerance, 1e-6 absolute on every parameter
and buffer, only leaves room for kernels that round differently.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from conftest import CACHE_VAR, use_cache
from reid_prune import build_model, load_model
from reid_prune.bench import load_bench, plan_bench
from reid_prune.checkpoint import module_widths
from reid_prune.cli import main
from reid_prune.config import dump_config, load_config
from reid_prune.data import PKSampler, build_train_loader, build_transforms
from reid_prune.distillation import Distiller
from reid_prune.distributed import all_reduce_mean, broadcast_object, process_group_from_env
from reid_prune.jobs.wiring import make_train_loader, model_config_for, prepare_dataset
from reid_prune.engine.schedule import lr_at
from reid_prune.engine.trainer import Trainer, build_optimizer, shared_copy
from reid_prune.runtime import resolve_device, seed_everything
from reid_prune.losses import ReIDLoss
from reid_prune.pruners import PruneContext, get_pruner

WORLD = 2
TOLERANCE = 1e-6
# 16 identities, P=4 per rank, 2 ranks: 2 steps per epoch with a global batch of 4 x 2 x 2 = 16 images.
# Augmentation is off so the single-process reference can feed exactly the images each rank saw, and
# the reference computes in fp32, NCHW: precision and layout are tested in test_precision.py.
TINY = [
    "data.height=64", "data.width=32", "data.p=4", "data.k=2", "data.workers=0", "data.eval_batch_size=64",
    "data.synthetic.ids=16", "data.synthetic.test_ids=4", "data.synthetic.images_per_camera=2",
    "data.transforms.flip_prob=0", "data.transforms.pad=0", "data.transforms.random_erasing=0",
    "model.arch=resnet18", "loss.id_weight=1.0", "train.warmup_epochs=1", "train.milestones=[2]",
    "train.eval_every=1", "train.device=cpu", "eval.latency=false", "train.amp=off", "train.channels_last=false",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A generated dataset shared by the test process and the ranks (generated here, before any rank starts)."""
    root = tmp_path_factory.mktemp("ddp_cache")
    mp_ = pytest.MonkeyPatch()
    use_cache(mp_, root)
    prepare_dataset(load_config(None, TINY).data, verbose=False)
    yield root
    mp_.undo()


def _torchrun(args: list[str], cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, CACHE_VAR: str(cache), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={WORLD}", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "reid_prune", *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _reference_run(cfg, *, per_rank: bool) -> dict[str, torch.Tensor]:
    """What 2-rank DDP computes, in one process (per_rank=True), or a naive 2P x K single batch (False)."""
    dataset = prepare_dataset(cfg.data, verbose=False)
    model_config = model_config_for(cfg, dataset.num_train_pids)
    seed_everything(cfg.train.seed)
    model = build_model(**model_config)
    d = cfg.data
    transform = build_transforms(d.height, d.width, train=True, flip_prob=0, pad=0, random_erasing=0)
    loaders = [build_train_loader(dataset.train, transform, p=d.p, k=d.k, seed=cfg.train.seed, workers=0,
                                  num_replicas=WORLD, rank=r) for r in range(WORLD)]
    optimizer = build_optimizer(model, cfg.train, cfg.train.lr)
    loss = cfg.loss
    criterion = ReIDLoss(triplet=loss.triplet, margin=loss.margin, soft_margin=loss.soft_margin, metric=loss.metric,
                         triplet_weight=loss.triplet_weight, id_weight=loss.id_weight,
                         label_smoothing=loss.label_smoothing)
    model.train()
    for epoch in range(cfg.train.epochs):
        for loader in loaders:
            loader.batch_sampler.set_epoch(epoch)
        steps = len(loaders[0])
        for step, halves in enumerate(zip(*loaders)):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(cfg.train, epoch + step / steps)
            if per_rank:
                losses, rank0_buffers = [], None
                for rank, (images, pids, _, _) in enumerate(halves):
                    feats, logits = model(images, with_logits=True)
                    losses.append(criterion(feats, logits, pids)[0])
                    if rank == 0:
                        rank0_buffers = {k: v.clone() for k, v in model.named_buffers()}
                total = sum(losses) / WORLD
            else:
                images = torch.cat([h[0] for h in halves])
                pids = torch.cat([h[1] for h in halves])
                feats, logits = model(images, with_logits=True)
                total = criterion(feats, logits, pids)[0]
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
            if per_rank:
                with torch.no_grad():
                    for name, buffer in model.named_buffers():
                        buffer.copy_(rank0_buffers[name])
    return {k: v.detach() for k, v in model.state_dict().items()}


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.mark.slow
def test_two_ranks_match_one_process_and_resume(cache, tmp_path):
    """torchrun train for 1 epoch, then --resume to 2: equal to the single-process reference of 2 epochs."""
    out = tmp_path / "run"
    dump_config(load_config(None, TINY), tmp_path / "tiny.yaml")
    base = ["train", "--config", str(tmp_path / "tiny.yaml"), "--quiet", "--output", str(out)]
    first = _torchrun(base + ["--set=train.epochs=1"], cache)
    assert first.stdout.count("trained resnet18") == 1  # only rank 0 prints
    _torchrun(base + ["--set=train.epochs=2", "--resume"], cache)
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "config.yaml", "last.pt", "metrics.jsonl"]
    epochs = [line for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(epochs) == 2 and all('"mAP"' in line for line in epochs)  # rank 0 alone logs, and evaluates

    ddp = torch.load(out / "last.pt", weights_only=True)["state_dict"]
    cfg = load_config(None, TINY + ["train.epochs=2"])
    reference = _reference_run(cfg, per_rank=True)
    difference = _max_difference(ddp, reference)
    assert difference <= TOLERANCE, difference
    # The comparison is not trivial: one forward pass over the global batch (mining over all 8 identities,
    # BatchNorm over 16 images) trains differently.
    naive = _reference_run(cfg, per_rank=False)
    assert _max_difference(ddp, naive) > 1000 * TOLERANCE


def _soft_fpgm_worker(rank: int, port: int, cache: str, out: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORLD), CACHE_VAR: cache})
    torch.set_num_threads(1)
    with process_group_from_env():
        cfg = load_config(None, TINY + ["train.epochs=2"])
        dataset = prepare_dataset(cfg.data, verbose=False)
        model_config = model_config_for(cfg, dataset.num_train_pids)
        seed_everything(rank)  # different weights on each rank: DDP must start all ranks from rank 0's
        model = build_model(**model_config)
        pruner = get_pruner("fpgm", rate=0.3, mode="soft", input_size=(64, 32))
        trainer = Trainer(cfg, model, model_config, make_train_loader(cfg, dataset), hooks=[pruner], progress=False)
        trainer.fit()
        pruned = pruner.finalize(trainer.model)
        try:
            Trainer(load_config(None, TINY + ["train.sync_bn=true"]), pruned, model_config, trainer.train_loader)
            sync_bn_error = ""
        except ValueError as err:
            sync_bn_error = str(err)
        collectives = {
            "mean": all_reduce_mean({"tensor": torch.tensor([1.0, 2.0]) * rank, "number": float(rank)}),
            "broadcast": broadcast_object({"from": rank}),
        }
        torch.save({"masks": pruner.schedule.masks, "state_dict": pruned.state_dict(), "widths": module_widths(pruned),
                    "collectives": collectives, "sync_bn_error": sync_bn_error}, Path(out) / f"rank{rank}.pt")


def _spawn_ranks(worker, cache: Path, out: Path, what: str) -> list[dict]:
    """Run ``worker(rank, port, cache, out)`` on 2 spawned ranks; returns what each saved as out/rank{r}.pt."""
    context = mp.start_processes(worker, args=(_free_port(), str(cache), str(out)), nprocs=WORLD,
                                 join=False, start_method="spawn")
    deadline = time.monotonic() + 300
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the 2-rank {what} run did not finish in 300 s")
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


@pytest.mark.slow
def test_soft_fpgm_under_two_ranks_prunes_identically(cache, tmp_path):
    ranks = _spawn_ranks(_soft_fpgm_worker, cache, tmp_path, "soft FPGM")
    assert ranks[0]["masks"] and any(ranks[0]["masks"].values())
    assert ranks[0]["masks"] == ranks[1]["masks"]
    assert ranks[0]["widths"] == ranks[1]["widths"]
    full = module_widths(build_model("resnet18"))
    assert ranks[0]["widths"]["layer1.0.conv1"][0] < full["layer1.0.conv1"][0]
    assert _max_difference(ranks[0]["state_dict"], ranks[1]["state_dict"]) == 0.0
    for r in range(WORLD):
        mean = ranks[r]["collectives"]["mean"]
        assert torch.equal(mean["tensor"], torch.tensor([0.5, 1.0])) and mean["number"] == 0.5
        assert ranks[r]["collectives"]["broadcast"] == {"from": 0}
        assert "SyncBatchNorm runs on GPUs only" in ranks[r]["sync_bn_error"]


@contextmanager
def _rank_with_data(rank: int, port: int, cache: str):
    """One spawned rank's process group, and (model, loader): the same seeded model, each rank's own batches."""
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORLD), CACHE_VAR: cache})
    torch.set_num_threads(1)
    with process_group_from_env():
        cfg = load_config(None, TINY)
        dataset = prepare_dataset(cfg.data, verbose=False)
        seed_everything(0)
        model = build_model(**model_config_for(cfg, dataset.num_train_pids)).eval()
        yield model, make_train_loader(cfg, dataset)  # each rank reads other identities


def _thinet_worker(rank: int, port: int, cache: str, out: str) -> None:
    with _rank_with_data(rank, port, cache) as (model, loader):
        images = next(iter(loader))[0]
        pruned = get_pruner("thinet", rate=0.3).prune(model, PruneContext(data=loader, num_batches=1))
        torch.save({"state_dict": pruned.state_dict(), "widths": module_widths(pruned), "images": images},
                   Path(out) / f"rank{rank}.pt")


@pytest.mark.slow
def test_thinet_under_two_ranks_keeps_the_same_channels_and_weights(cache, tmp_path):
    """ThiNet samples each rank's own batch: scores are averaged and rank 0's least-squares refit is kept."""
    ranks = _spawn_ranks(_thinet_worker, cache, tmp_path, "ThiNet")
    assert not torch.equal(ranks[0]["images"], ranks[1]["images"])  # the ranks did see different data
    assert ranks[0]["widths"] == ranks[1]["widths"]
    assert ranks[0]["widths"]["layer1.0.conv1"][0] < module_widths(build_model("resnet18"))["layer1.0.conv1"][0]
    assert _max_difference(ranks[0]["state_dict"], ranks[1]["state_dict"]) == 0.0


def _molchanov_worker(rank: int, port: int, cache: str, out: str) -> None:
    with _rank_with_data(rank, port, cache) as (model, loader):
        pruner = get_pruner("molchanov", rate=0.3, scope="all", channels_per_step=300, finetune_steps=0,
                            input_size=(64, 32))
        context = PruneContext(data=loader, num_batches=1)
        pruner.setup(model)
        own = pruner.criterion.scores(model, pruner.groups, context)  # this rank's scores, before the all-reduce
        pruned = pruner.prune(model, context)
        torch.save({"own": own, "widths": module_widths(pruned), "state_dict": pruned.state_dict()},
                   Path(out) / f"rank{rank}.pt")


@pytest.mark.slow
def test_molchanov_under_two_ranks_averages_scores_before_cutting(cache, tmp_path):
    ranks = _spawn_ranks(_molchanov_worker, cache, tmp_path, "Molchanov")
    own = [ranks[r]["own"] for r in range(WORLD)]
    assert any(not torch.allclose(own[0][k], own[1][k]) for k in own[0])  # the ranks' data give other scores
    assert ranks[0]["widths"] == ranks[1]["widths"]
    assert ranks[0]["widths"] != module_widths(build_model("resnet18"))
    assert _max_difference(ranks[0]["state_dict"], ranks[1]["state_dict"]) == 0.0


# configs/bench/synthetic_tiny.yaml at its smallest: ResNet18 trained, pruned to half its MACs by HaoLi (one-shot)
# and by soft FPGM (a training hook), and the cross-domain cell that fine-tunes with a new identity classifier.
BENCH_TINY = [
    "base.data.p=4", "base.data.k=2", "base.train.max_batches=2", "base.train.device=cpu",
    "base.eval.latency_batch_sizes=[1]", "epochs=1", "finetune_epochs=1", "baselines=[resnet18]",
    "prune_arch=resnet18", "budgets=[0.5]", "methods=[haoli, {name: fpgm, label: FPGM soft, options: {mode: soft}}]",
    "datasets.synthetic_a.synthetic={ids: 8, test_ids: 4, images_per_camera: 2, seed: 0}",
    "datasets.synthetic_b.synthetic={ids: 12, test_ids: 4, images_per_camera: 2, seed: 1}",
]


@pytest.mark.slow
def test_bench_under_two_ranks_runs_each_cell_once_and_caches(cache, tmp_path):
    """torchrun bench: every rank trains each cell, rank 0 alone logs and writes; a rerun computes nothing."""
    out = tmp_path / "bench"
    args = ["bench", "--config", str(Path(__file__).parents[1] / "configs" / "bench" / "synthetic_tiny.yaml"),
            "--output", str(out), "--quiet", *[f"--set={o}" for o in BENCH_TINY]]
    first = _torchrun(args, cache)
    cells = 4  # train on A; HaoLi and FPGM soft fine-tuned on A; HaoLi fine-tuned on B
    assert first.stdout.count(f"/{cells}] ") == cells and first.stdout.count("done in ") == cells
    summary = json.loads((out / "results.json").read_text())
    assert summary["complete"] and summary["environment"]["world_size"] == WORLD
    finished = sorted(p.parent for p in (out / "cells").glob("*/result.json"))
    assert len(finished) == cells
    # Two ranks train with twice the global batch: their cells are not the single-process bench's.
    single = plan_bench(load_bench(Path(args[2]), BENCH_TINY))
    assert not {c.key for c in single.cells} & {p.name for p in finished}
    full = build_model("resnet18")
    for folder in finished:
        if folder.name.startswith("prune-"):
            pruned = load_model(folder / "pruned.pt")
            assert module_widths(pruned)["layer1.0.conv1"][0] < module_widths(full)["layer1.0.conv1"][0]
    classes = {p.name.split("-s0-")[0]: load_model(p / "pruned.pt").classifier.out_features
               for p in finished if p.name.startswith("prune-")}
    assert classes == {"prune-synthetic_a-HaoLi-0.5": 8, "prune-synthetic_a-FPGM-soft-0.5": 8,
                       "prune-synthetic_a-to-synthetic_b-HaoLi-0.5": 12}

    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")}
    again = _torchrun(args, cache)
    assert again.stdout.count("finished earlier (cached)") == cells and "done in " not in again.stdout
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")} == stamps
    assert json.loads((out / "results.json").read_text())["rows"] == summary["rows"]


def test_sampler_ranks_deal_out_the_single_process_epoch():
    pids = [i // 3 for i in range(3 * 13)]  # 13 identities of 3 images
    single = PKSampler(pids, 3, 2, seed=5)
    ranks = [PKSampler(pids, 3, 2, seed=5, num_replicas=2, rank=r) for r in range(2)]
    for epoch in (0, 1):
        for sampler in (single, *ranks):
            sampler.set_epoch(epoch)
        batches = list(single)
        assert len(batches) == 4 and len(ranks[0]) == len(ranks[1]) == 2
        for r, sampler in enumerate(ranks):
            assert list(sampler) == batches[r::2]
            assert list(sampler) == list(sampler)  # the same epoch again gives the same batches


def test_sync_bn_copy_shares_weights_and_statistics():
    model = build_model("resnet18")
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(shared_copy(model))
    assert isinstance(synced.bn1, nn.SyncBatchNorm) and type(model.bn1) is nn.BatchNorm2d
    assert all(a is b for a, b in zip(model.parameters(), synced.parameters(), strict=True))
    before = model.bn1.running_mean.clone()
    synced.train()(torch.randn(4, 3, 64, 32))  # one process: SyncBatchNorm acts as BatchNorm
    assert not torch.equal(model.bn1.running_mean, before)
    assert model.bn1.running_mean is synced.bn1.running_mean


def test_single_process_commands_refuse_torchrun(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["synth", "--output", str(tmp_path / "s")]) == 2
    assert "synth runs as one process; start it without torchrun" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()



def test_auto_device_is_the_local_rank_gpu_under_torchrun(monkeypatch):
    """No GPU needed: CUDA's presence is faked; only the device choice is checked."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == torch.device("cuda")  # one process: the current GPU
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("auto") == resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)  # an explicit index is obeyed
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(ValueError, match="shows 2 GPU"):
        resolve_device("auto")


def _distill_worker(rank: int, port: int, cache: str, out: str) -> None:
    with _rank_with_data(rank, port, cache) as (model, loader):
        cfg = load_config(None, TINY + ["train.epochs=1", "prune.distill={}"])
        # A teacher of another feature size: the feature loss trains a projection outside DDP's module.
        seed_everything(1)
        teacher = build_model("resnet18", embedding_dim=32)
        seed_everything(rank)  # each rank makes its own projection: the trainer must start them from rank 0's
        distiller = Distiller(teacher, cfg.prune.distill, (cfg.data.height, cfg.data.width))
        distiller.match_student(model)
        own = distiller.projection.weight.detach().clone()
        trainer = Trainer(cfg, model.train(), model.build_config, loader, progress=False, distiller=distiller)
        start = distiller.projection.weight.detach().clone()
        trainer.fit()
        torch.save({"own": own, "start": start, "projection": distiller.projection.weight.detach().clone(),
                    "state_dict": trainer.model.state_dict()}, Path(out) / f"rank{rank}.pt")


@pytest.mark.slow
def test_a_distillation_projection_trains_identically_on_two_ranks(cache, tmp_path):
    ranks = _spawn_ranks(_distill_worker, cache, tmp_path, "distillation")
    assert not torch.equal(ranks[0]["own"], ranks[1]["own"])  # seeded apart on purpose
    assert torch.equal(ranks[0]["start"], ranks[0]["own"]) and torch.equal(ranks[1]["start"], ranks[0]["own"])
    assert torch.equal(ranks[0]["projection"], ranks[1]["projection"])
    assert not torch.equal(ranks[0]["projection"], ranks[0]["start"])
    assert _max_difference(ranks[0]["state_dict"], ranks[1]["state_dict"]) == 0.0
