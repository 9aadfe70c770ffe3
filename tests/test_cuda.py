"""The CUDA paths: fp16 / bf16 autocast, channels-last, train -> eval -> prune on a GPU, latency side by side.

Every test here is marked ``cuda`` and skips without a CUDA GPU (CI has none);
``scripts/gpu_check.sh`` runs them with ``pytest -m cuda`` on a machine lent a GPU.
"""

import json

import pytest
import torch

from conftest import REPO, TINY_RUN
from reid_prune import build_model
from reid_prune.cli import main
from reid_prune.config import load_config
from reid_prune.engine import Trainer
from reid_prune.evaluation import measure_latency
from reid_prune.precision import model_memory_format, resolve_precision

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here; scripts/gpu_check.sh runs these"),
]
GPU_RUN = [o for o in TINY_RUN if not o.startswith("train.device")] + [
    "train.device=cuda", "train.warmup_epochs=0", "train.eval_every=1", "eval.latency_batch_sizes=[1]"]


def test_auto_follows_the_gpu_generation():
    major, minor = torch.cuda.get_device_capability()
    assert resolve_precision("auto", "cuda") == ("bf16" if (major, minor) >= (8, 0) else "fp16")


@pytest.mark.parametrize("amp, dtype, scaled", [("fp16", torch.float16, True), ("bf16", torch.bfloat16, False)])
def test_gpu_step_autocasts_with_fp32_weights(amp, dtype, scaled):
    if amp == "bf16" and torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("bf16 needs compute capability 8.0+")
    cfg = load_config(None, ["model.arch=resnet18", "loss.id_weight=1.0", "train.device=cuda", f"train.amp={amp}"])
    model = build_model("resnet18", num_classes=4)
    seen = []
    model.layer1[0].conv1.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    trainer = Trainer(cfg, model, model.build_config, train_loader=None, progress=False)
    parts = trainer.train_step(torch.randn(8, 3, 64, 32), torch.arange(4).repeat_interleave(2))
    assert seen == [dtype] and trainer.scaler.is_enabled() is scaled and torch.isfinite(torch.tensor(parts["loss"]))
    assert all(p.dtype == torch.float32 and p.is_cuda for p in trainer.model.parameters())
    assert model_memory_format(trainer.model) == "channels_last"  # auto: channels-last under autocast on CUDA


def test_train_eval_prune_on_the_gpu(tmp_path, cache_at, capsys):
    """The CLI end to end on CUDA: a CPU-loaded checkpoint is evaluated and pruned on the GPU."""
    cache_at()
    sets = ["--config", str(REPO / "configs" / "demo.yaml"), *[f"--set={o}" for o in GPU_RUN + ["train.epochs=1"]]]
    assert main(["train", "--quiet", "--output", str(tmp_path / "run"), *sets]) == 0
    assert main(["eval", "--quiet", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--json",
                 str(tmp_path / "eval.json"), *sets]) == 0
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["latency_setting"]["device"] == "cuda"
    assert report["precision"] == resolve_precision("auto", "cuda") and report["memory_format"] == "channels_last"
    assert main(["prune", "--quiet", "--checkpoint", str(tmp_path / "run" / "best.pt"), "--method", "haoli",
                 "--target-macs", "0.5", "--finetune-epochs", "1", "--output", str(tmp_path / "pruned"), *sets]) == 0
    pruned = json.loads((tmp_path / "pruned" / "report.json").read_text())
    assert pruned["finetuned"]["macs"] < pruned["before"]["macs"]
    assert pruned["finetuned"]["memory_format"] == "channels_last"


def test_gpu_latency_side_by_side():
    precisions = ["fp32", "fp16"] + (["bf16"] if torch.cuda.get_device_capability() >= (8, 0) else [])
    latency = measure_latency(build_model("resnet18"), (128, 64), batch_sizes=(1, 32), device="cuda", warmup=2,
                              repeats=3, precision=precisions, channels_last=True)
    assert set(latency) == set(precisions) and all(min(v.values()) > 0 for v in latency.values())
