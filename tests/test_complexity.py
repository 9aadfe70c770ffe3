"""Parameter and MAC counts (hand-computed and published ResNet figures) and the latency helper."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from reid_prune import build_model
from reid_prune.evaluation import complexity, measure_latency


def tiny_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    )


def test_params_and_macs_of_a_hand_built_net():
    model = tiny_net()
    model.train()
    running_mean = model[1].running_mean.clone()

    result = complexity(model, input_size=(8, 4))

    assert result["params"] == sum(p.numel() for p in model.parameters())
    assert result["params"] == (3 * 9 * 8 + 8) + (8 + 8) + (8 * 5 + 5)
    # Conv: 8 output channels x 8x4 positions x (3 x 3x3) taps; Linear: 8 x 5. BN, ReLU, pool and biases not counted.
    assert result["macs"] == 8 * 8 * 4 * 27 + 8 * 5
    assert result["flops"] == 2 * result["macs"]
    # Counting ran in eval mode and left the model as it was.
    assert model.training
    torch.testing.assert_close(model[1].running_mean, running_mean)


@pytest.mark.parametrize(("last_stride", "gmacs"), [(2, 2.67), (1, 4.05)])
def test_reid_resnet50_macs_at_256x128(last_stride, gmacs):
    result = complexity(build_model("resnet50", last_stride=last_stride), input_size=(256, 128))
    assert round(result["macs"] / 1e9, 2) == gmacs


def test_torchvision_resnet50_macs():
    model = torchvision.models.resnet50()
    assert round(complexity(model, input_size=(224, 224))["macs"] / 1e9, 2) == 4.09
    assert round(complexity(model, input_size=(256, 128))["macs"] / 1e9, 2) == 2.67


def test_measure_latency_keys_and_model_untouched():
    model = tiny_net()
    model.train()
    latency = measure_latency(model, input_size=(8, 4), batch_sizes=(1, 3), warmup=1, repeats=2)
    assert set(latency) == {"batch1", "batch3"}
    assert all(isinstance(v, float) and v > 0 for v in latency.values())
    assert model.training


def test_measure_latency_times_precisions_side_by_side():
    model = tiny_net()
    latency = measure_latency(model, input_size=(8, 4), batch_sizes=(1, 2), warmup=0, repeats=2,
                              precision=["fp32", "bf16", "off"], channels_last=True)  # off is fp32: timed once
    assert set(latency) == {"fp32", "bf16"}
    assert all(set(per_batch) == {"batch1", "batch2"} and min(per_batch.values()) > 0 for per_batch in latency.values())
    assert model[0].weight.is_contiguous()  # the caller's model keeps its layout
    assert set(measure_latency(model, input_size=(8, 4), batch_sizes=(1,), repeats=1, precision="bf16")) == {"batch1"}


def test_measure_latency_rejects_zero_repeats():
    with pytest.raises(ValueError, match="repeats >= 1"):
        measure_latency(tiny_net(), repeats=0)


CALLS: list[str] = []


class Recorder(nn.Module):
    """Logs its name on every forward (into a module-level list: the copies timed share it)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        CALLS.append(self.name)
        return self.conv(x)


def test_paired_latency_times_the_models_in_turn_on_copies():
    from reid_prune.evaluation import paired_latency

    CALLS.clear()
    a, b = Recorder("a"), Recorder("b")
    a.train()
    result = paired_latency([a, b], (8, 4), batch_size=2, rounds=3, warmup=1)
    assert len(result) == 2 and all(ms > 0 for ms in result)
    assert CALLS == ["a", "b"] + ["a", "b"] * 3  # warm-up, then one pass of each per round
    assert a.training  # copies were timed, in eval mode; the caller's model is as it was
    CALLS.clear()
    paired_latency([a, b], (8, 4), rounds=2, warmup=0, min_seconds=60)
    assert CALLS == ["a", "b"] * 20  # a fast pair gets more rounds, at most 10 x rounds
