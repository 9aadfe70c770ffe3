"""Resume: exact for any number of loader workers, refused when the config changes what the run computes."""

import json
from pathlib import Path

import pytest
import torch

from conftest import TINY_RUN
from reid_prune.cli import main
from reid_prune.config import load_config
from reid_prune.data import build_train_loader, build_transforms
from reid_prune.engine import Trainer
from reid_prune.jobs.train import train
from reid_prune.jobs.wiring import prepare_dataset

TINY = TINY_RUN + ["train.warmup_epochs=1", "train.milestones=[2]", "train.eval_every=1", "eval.latency=false"]
REPO = Path(__file__).resolve().parents[1]


# One generated dataset per test session, outside the user's cache.
pytestmark = pytest.mark.usefixtures("session_cache")


def _weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)["state_dict"]


def test_augmentation_depends_on_the_epoch_only_not_on_workers(tmp_path):
    cfg = load_config(None, TINY)
    samples = prepare_dataset(cfg.data, verbose=False).train
    transform = build_transforms(64, 32, train=True)  # flip, pad-crop and random erasing: all random

    def epoch_batches(workers: int, epochs: list[int]) -> list[torch.Tensor]:
        loader = build_train_loader(samples, transform, p=4, k=2, seed=0, workers=workers)
        out = []
        for epoch in epochs:
            loader.batch_sampler.set_epoch(epoch)
            out = [images for images, _, _, _ in loader]
        return out  # the batches of the last epoch listed

    reference = epoch_batches(0, [1])
    # Persistent workers that already served epoch 0, and a fresh loader started at epoch 1 (a resume).
    for batches in (epoch_batches(2, [0, 1]), epoch_batches(2, [1]), epoch_batches(0, [0, 1])):
        assert len(batches) == len(reference) == 3
        assert all(torch.equal(a, b) for a, b in zip(batches, reference))
    assert not torch.equal(epoch_batches(0, [0])[0], reference[0])  # other epochs do differ


@pytest.mark.slow
def test_interrupted_run_resumed_with_workers_equals_the_uninterrupted_one(tmp_path, monkeypatch):
    """Issue 11: with data.workers=2 a resumed run differed from the uninterrupted one (max |diff| 7.9)."""
    cfg = load_config(None, TINY + ["train.epochs=2", "data.workers=2"])
    train(cfg, output=tmp_path / "full", progress=False)

    real_step, calls = Trainer.train_step, []

    def ctrl_c_in_epoch_2(self, images, pids):
        calls.append(1)
        if len(calls) == 3 + 2:  # 3 batches per epoch: the second batch of the second epoch
            raise KeyboardInterrupt
        return real_step(self, images, pids)

    monkeypatch.setattr(Trainer, "train_step", ctrl_c_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, output=tmp_path / "split", progress=False)
    monkeypatch.setattr(Trainer, "train_step", real_step)
    assert len(calls) == 3 + 2 and torch.load(tmp_path / "split" / "last.pt", weights_only=True)["epoch"] == 1
    train(cfg, output=tmp_path / "split", resume=True, progress=False)

    full, split = _weights(tmp_path / "full" / "last.pt"), _weights(tmp_path / "split" / "last.pt")
    assert full.keys() == split.keys()
    for key in full:
        assert torch.equal(full[key], split[key]), key
    lines = [json.loads(x) for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2]  # counted from 1, as on the console
    full_lines = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [x["loss"] for x in lines] == [x["loss"] for x in full_lines]


def _cli_train(out: Path, *overrides: str, resume: bool = False) -> int:
    args = ["train", "--config", str(REPO / "configs" / "demo.yaml"), "--quiet", "--output", str(out),
            *[f"--set={o}" for o in TINY + list(overrides)]]
    return main(args + (["--resume"] if resume else []))


@pytest.mark.slow
def test_resume_refuses_a_changed_config_and_keeps_the_run(tmp_path, capsys):
    """Issue 11: --resume --set model.arch=resnet34 exited 0 and saved ResNet-18 weights labelled resnet34."""
    out = tmp_path / "run"
    assert _cli_train(out, "train.epochs=1") == 0
    before = {name: (out / name).read_bytes() for name in ("last.pt", "best.pt", "config.yaml", "metrics.jsonl")}
    capsys.readouterr()
    assert _cli_train(out, "train.epochs=2", "model.arch=resnet34", "loss.margin=0.5", resume=True) == 2
    err = capsys.readouterr().err
    assert 'model.arch ("resnet18" -> "resnet34")' in err and "loss.margin (0.3 -> 0.5)" in err
    assert "may change only" in err and "train.epochs" in err and "Traceback" not in err
    assert {name: (out / name).read_bytes() for name in before} == before  # nothing rewritten

    # The memory format changes the order of the float sums: refused, as the run would no longer be exact.
    assert _cli_train(out, "train.epochs=2", "train.channels_last=false", resume=True) == 2
    assert "train.channels_last" in capsys.readouterr().err
    # Keys that do not change what is computed may change: more epochs, evaluation period, workers, and keys
    # training never reads (pruning and evaluation settings).
    assert _cli_train(out, "train.epochs=2", "train.eval_every=2", "data.workers=1", "prune.rate=0.3",
                      "eval.ap=official", "model.retrieval_feature=before_neck", resume=True) == 0
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 2
    assert load_config(out / "config.yaml").train.epochs == 2
    assert _cli_train(out, "train.epochs=1", resume=True) == 2
    assert "has trained 2 epochs already, more than train.epochs=1" in capsys.readouterr().err


def test_optimiser_state_only_in_last_and_stale_files_of_a_killed_run(tmp_path):
    cfg = load_config(None, TINY + ["train.epochs=1"])
    out = tmp_path / "run"
    # A run stopped before its first checkpoint left a metrics line; a fresh run starts the file anew.
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"epoch": 1, "loss": 9.0}\n{"epoch": 2, "loss": 8.0}\n')
    train(cfg, output=out, progress=False)
    assert [json.loads(x)["epoch"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    last, best = (torch.load(out / name, weights_only=True) for name in ("last.pt", "best.pt"))
    assert {"optimizer", "scaler"} <= last.keys() and not {"optimizer", "scaler"} & best.keys()
    assert (out / "best.pt").stat().st_size < 0.75 * (out / "last.pt").stat().st_size  # Adam keeps 2 moments

    # A kill during a checkpoint write leaves .last.pt.XXXX.tmp; the next start removes it (and only it).
    stale = [out / ".last.pt.k1ll3d.tmp", out / ".best.pt.x.tmp"]
    for path in stale:
        path.write_bytes(b"\0" * 1000)
    (out / "notes.tmp").write_text("mine")
    train(load_config(None, TINY + ["train.epochs=2"]), output=out, resume=True, progress=False)
    assert not any(path.exists() for path in stale) and (out / "notes.tmp").exists()


def test_a_new_run_refuses_a_folder_holding_best_pt(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "best.pt").write_bytes(b"model")
    with pytest.raises(FileExistsError, match=r"already holds a run \(best.pt\)"):
        train(load_config(None, TINY + ["train.epochs=1"]), output=out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["best.pt"]


def test_resume_refuses_another_precision_than_the_run_used(tmp_path, capsys):
    out = tmp_path / "run"
    assert _cli_train(out, "train.epochs=1", "train.amp=off") == 0
    assert torch.load(out / "last.pt", weights_only=True)["compute"]["precision"] == "fp32"
    # A machine (or setting) that resolves to another precision: the stored one is compared with what resolves now.
    ckpt = torch.load(out / "last.pt", weights_only=True)
    ckpt["compute"]["precision"] = "bf16"
    torch.save(ckpt, out / "last.pt")
    capsys.readouterr()
    assert _cli_train(out, "train.epochs=2", "train.amp=off", resume=True) == 2
    assert "was trained with precision bf16" in capsys.readouterr().err
