"""scripts/gpu_check.sh without a GPU: its arguments, the commands it would run, and its refusal to run."""

import shutil
import subprocess
import sys

import pytest
import torch

from conftest import REPO

SCRIPT = REPO / "scripts" / "gpu_check.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="the GPU check is a bash script")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


def test_dry_run_lists_every_step_with_the_arguments(tmp_path):
    result = _run("--dry-run", "--epochs", "2", "--data", "/data/cuhk", "--output", str(tmp_path / "out"),
                  "--python", sys.executable)
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(": ", 1) for line in result.stdout.splitlines())
    assert list(lines) == ["TESTS", "TRAIN", "PRUNE", "EVAL", "TORCHRUN", "NCCL"]
    assert lines["TESTS"] == f"{sys.executable} -m pytest -q -m cuda tests"
    train = lines["TRAIN"]
    for part in ("-m reid_prune train", "data.root=/data/cuhk", "model.arch=resnet50", "data.height=256",
                 "data.width=128", "train.device=cuda", "train.amp=auto", "train.epochs=2",
                 f"--output {tmp_path / 'out' / 'train'}"):
        assert part in train, part
    assert f"--checkpoint {tmp_path / 'out' / 'train' / 'last.pt'}" in lines["PRUNE"]
    assert "--target-macs 0.5 --finetune-epochs 1" in lines["PRUNE"]
    assert f"--checkpoint {tmp_path / 'out' / 'prune' / 'pruned.pt'}" in lines["EVAL"]
    assert "torch.distributed.run --standalone --nproc_per_node=1 -m reid_prune train" in lines["TORCHRUN"]
    assert lines["NCCL"].endswith("nccl_probe.py")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, message", [
    (["--bogus"], "unknown argument '--bogus'"),
    (["--epochs", "0"], "--epochs must be a positive integer, got '0'"),
    (["--epochs", "two"], "--epochs must be a positive integer, got 'two'"),
    (["--data"], "--data needs a value"),
])
def test_usage_mistakes_exit_2_with_the_usage(args, message):
    result = _run(*args)
    assert result.returncode == 2 and message in result.stderr and "usage: bash scripts/gpu_check.sh" in result.stderr


def test_help():
    result = _run("--help")
    assert result.returncode == 0 and "--dry-run" in result.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the check would run")
def test_refuses_to_run_without_cuda_and_writes_nothing(tmp_path):
    result = _run("--python", sys.executable, "--output", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "refusing to run" in result.stderr and "no CUDA GPU" in result.stderr
    assert not (tmp_path / "out").exists()
