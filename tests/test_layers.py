"""The layer table (reid_prune.layers): widths, slicing, resizing, lookup and registering a new layer type."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from reid_prune import layers
from reid_prune.checkpoint import apply_widths, module_widths
from reid_prune.layers import (BATCHNORM, CONV, LINEAR, NORM, PRODUCER, LayerKind, copy_flags, kind_named, kind_of,
                               register, role_widths)
from reid_prune.pruners.cost import CostModel
from reid_prune.pruners.groups import find_channel_groups
from reid_prune.pruners.latency_table import Signature
from reid_prune.pruners.surgery import prune_group, zero_group

KEEP_OUT = [1, 4, 7]  # of 8 output channels
KEEP_IN = [0, 2, 3, 5]  # of 6 input channels


def _randomized(module: nn.Module) -> nn.Module:
    """Random weights, biases and running statistics, so every channel differs."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
            module.num_batches_tracked.fill_(5)
    return module


PRODUCER_CASES = {
    "conv": lambda: nn.Conv2d(6, 8, 3, stride=2, padding=1),
    "conv-nobias-dilated": lambda: nn.Conv2d(6, 8, (3, 1), dilation=2, bias=False),
    "linear": lambda: nn.Linear(6, 8),
}
NORM_CASES = {"bn1d": lambda: nn.BatchNorm1d(8), "bn2d": lambda: nn.BatchNorm2d(8)}


def _input(module: nn.Module, channels: int) -> torch.Tensor:
    return torch.randn(2, channels) if isinstance(module, (nn.Linear, nn.BatchNorm1d)) else \
        torch.randn(2, channels, 9, 7)


@pytest.mark.parametrize("case", sorted(PRODUCER_CASES))
def test_sliced_producer_keeps_exactly_the_chosen_rows_and_columns(case):
    module = _randomized(PRODUCER_CASES[case]()).eval()
    kind = kind_of(module)
    out_i, in_i = torch.tensor(KEEP_OUT), torch.tensor(KEEP_IN)

    both = kind.sliced(module, keep_out=out_i, keep_in=in_i)
    assert type(both) is type(module) and kind.widths(both) == (3, 4)
    torch.testing.assert_close(both.weight, module.weight[KEEP_OUT][:, KEEP_IN], rtol=0, atol=0)
    if module.bias is not None:
        torch.testing.assert_close(both.bias, module.bias[KEEP_OUT], rtol=0, atol=0)
    # The sliced layer computes the kept outputs of the full layer fed zeros on the dropped inputs.
    x = _input(module, 6)
    masked = x.clone()
    masked[:, [c for c in range(6) if c not in KEEP_IN]] = 0
    with torch.no_grad():
        torch.testing.assert_close(both(x[:, KEEP_IN]), module(masked)[:, KEEP_OUT])

    consumer = kind.sliced(module, keep_in=in_i)
    assert kind.widths(consumer) == (8, 4)
    torch.testing.assert_close(consumer.weight, module.weight[:, KEEP_IN], rtol=0, atol=0)
    assert consumer.bias is module.bias  # a consumer's outputs keep their width, so its bias is shared

    producer = kind.sliced(module, keep_out=out_i)
    assert kind.widths(producer) == (3, 6)
    torch.testing.assert_close(producer.weight, module.weight[KEEP_OUT], rtol=0, atol=0)


@pytest.mark.parametrize("case", sorted(NORM_CASES))
def test_sliced_norm_keeps_the_chosen_channels_of_every_tensor(case):
    module = _randomized(NORM_CASES[case]()).eval()
    kind = kind_of(module)
    new = kind.sliced(module, keep_out=KEEP_OUT)
    assert type(new) is type(module) and kind.widths(new) == (3,)
    assert (new.eps, new.momentum, new.affine) == (module.eps, module.momentum, module.affine)
    for name in ("weight", "bias", "running_mean", "running_var"):
        torch.testing.assert_close(getattr(new, name), getattr(module, name)[KEEP_OUT], rtol=0, atol=0)
    assert int(new.num_batches_tracked) == 5
    x = _input(module, 8)
    with torch.no_grad():
        torch.testing.assert_close(new(x[:, KEEP_OUT]), module(x)[:, KEEP_OUT])
    with pytest.raises(ValueError, match="one channel dim"):
        kind.sliced(module, keep_out=KEEP_OUT, keep_in=KEEP_OUT)


def test_sliced_keeps_flags_mode_and_channels_last():
    conv = _randomized(nn.Conv2d(6, 8, 3)).to(memory_format=torch.channels_last).eval()
    conv.bias.requires_grad_(False)
    new = CONV.sliced(conv, keep_out=KEEP_OUT)
    assert new.weight.is_contiguous(memory_format=torch.channels_last) and not new.weight.is_contiguous()
    assert new.weight.requires_grad and not new.bias.requires_grad
    assert not new.training
    assert not any(t.is_meta for t in [*new.parameters(), *new.buffers()])


@pytest.mark.parametrize("case", sorted({**PRODUCER_CASES, **NORM_CASES}))
def test_resized_keeps_hyperparameters_and_flags_at_new_widths(case):
    module = {**PRODUCER_CASES, **NORM_CASES}[case]().eval()
    kind = kind_of(module)
    widths = (3, 4) if kind.role == PRODUCER else (3,)
    module.weight.requires_grad_(False)
    new = kind.resized(module, widths, None)
    assert type(new) is type(module) and kind.widths(new) == widths
    assert not new.training and not new.weight.requires_grad
    assert new.bias is None or new.bias.requires_grad
    same = {"conv": ("kernel_size", "stride", "padding", "dilation", "padding_mode"), "linear": (),
            "batchnorm": ("eps", "momentum", "affine", "track_running_stats")}[kind.name]
    assert all(getattr(new, a) == getattr(module, a) for a in same)
    assert (getattr(new, "bias", None) is None) == (getattr(module, "bias", None) is None)
    assert all(p.is_meta for p in kind.resized(module, widths, "meta").parameters())


def test_grouped_convolutions_cannot_be_resized():
    with pytest.raises(NotImplementedError, match="groups=2"):
        CONV.resized(nn.Conv2d(4, 4, 3, groups=2), (2, 2), None)


def test_lookup_by_type_and_by_name():
    class Subclassed(nn.Conv2d):
        pass

    assert kind_of(nn.Conv2d(2, 3, 1)) is CONV and kind_of(nn.Linear(2, 3)) is LINEAR
    assert kind_of(nn.BatchNorm1d(3)) is BATCHNORM and kind_of(nn.BatchNorm2d(3)) is BATCHNORM
    assert kind_of(Subclassed(2, 3, 1)) is CONV  # the nearest registered base class
    for other in (nn.ReLU(), nn.GroupNorm(1, 4), nn.LayerNorm(4), nn.Sequential(nn.Conv2d(2, 3, 1))):
        assert kind_of(other) is None
    assert kind_named("conv") is CONV and kind_named("linear") is LINEAR
    with pytest.raises(ValueError, match="no layer kind is named 'deconv'"):
        kind_named("deconv")
    assert layers.PRODUCERS == (nn.Conv2d, nn.Linear) and layers.NORMS == (nn.BatchNorm1d, nn.BatchNorm2d)
    assert role_widths(PRODUCER, 3, 5) == (3, 5) and role_widths(NORM, 3, 5) == (3,)


def test_module_widths_reads_every_registered_layer_and_skips_others():
    model = nn.Sequential(nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5), nn.ReLU(), nn.GroupNorm(1, 5), nn.Flatten(),
                          nn.Linear(5, 2), nn.BatchNorm1d(2))
    assert module_widths(model) == {"0": [5, 3], "1": [5], "5": [2, 5], "6": [2]}


def test_latency_signature_comes_from_the_kind():
    conv = nn.Conv2d(6, 8, 3, stride=2, padding=1, bias=False)
    signature = Signature.of(conv, (6, 16, 8))
    assert signature.key(6, 8) == "conv k3x3 s2x2 p1x1 d1x1 g1 nobias @16x8: 6->8"
    assert Signature.of(nn.Linear(6, 8), (6,)).key(6, 8) == "linear g1 bias @-: 6->8"
    assert Signature.of(nn.Linear(6, 8), (5, 6)).key(6, 8) == "linear g1 bias @5: 6->8"  # features are last
    op = signature.op(4, 5)
    assert (op.in_channels, op.out_channels, op.kernel_size, op.stride, op.padding, op.bias) == \
        (4, 5, (3, 3), (2, 2), (1, 1), None)
    with pytest.raises(ValueError, match="numeric zero padding"):
        Signature.of(nn.Conv2d(6, 8, 3, padding="same"), (6, 16, 8))
    with pytest.raises(ValueError, match="time convs and linears, got BatchNorm2d"):
        Signature.of(nn.BatchNorm2d(6), (6, 16, 8))


class Pointwise(nn.Module):
    """A 1x1 channel mixer that is not an nn.Conv2d: weight (out, in), bias (out,)."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True, device=None) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, device=device))
        self.bias = nn.Parameter(torch.randn(out_channels, device=device)) if bias else None

    def forward(self, x):
        out = torch.einsum("oi,nihw->nohw", self.weight, x)
        return out if self.bias is None else out + self.bias[:, None, None]


POINTWISE = LayerKind(
    "pointwise", PRODUCER,
    widths=lambda m: (m.out_channels, m.in_channels),
    resized=lambda m, widths, device: copy_flags(Pointwise(widths[1], widths[0], m.bias is not None, device), m),
    geometry=lambda m: (1, 1),
)


@pytest.fixture
def table():
    """Restore the layer table after a test registers types."""
    saved = dict(layers.KINDS)
    yield layers.KINDS
    layers.KINDS.clear()
    layers.KINDS.update(saved)


def _net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), Pointwise(4, 6),
                         nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 2, 1))


def test_an_unregistered_layer_is_not_found_and_its_channels_stay_whole(table):
    model = _net()
    assert kind_of(model[3]) is None and "3" not in module_widths(model)
    with pytest.warns(UserWarning, match="left unpruned"):
        groups = find_channel_groups(model, scope="all", include_last_stage=True)
    assert not any("3" in g.producers for g in groups)


def test_registering_a_layer_type_makes_every_part_handle_it(table):
    register(Pointwise, POINTWISE)
    model = nn.Sequential(*[_randomized(m) for m in _net()]).eval()
    assert kind_of(model[3]) is POINTWISE and module_widths(model)["3"] == [6, 4]
    # MACs at (8, 4): conv 3->4 3x3, pointwise 4->6, conv 6->2 1x1, over 32 positions each.
    assert CostModel(model, (8, 4)).macs() == (4 * 3 * 9 + 6 * 4 + 2 * 6) * 32

    # The tracer keeps the layer whole and surgery cuts it like a conv.
    group = next(g for g in find_channel_groups(model, scope="all", include_last_stage=True) if g.producers == ["3"])
    assert (group.norms, group.consumers, group.channels) == (["4"], ["6"], 6)
    zeroed = copy.deepcopy(model)
    zero_group(zeroed, group, [1, 3, 4])
    prune_group(model, group, [0, 2, 5])
    assert isinstance(model[3], Pointwise)
    assert module_widths(model) == {"0": [4, 3], "1": [4], "3": [3, 4], "4": [3], "6": [2, 3]}
    x = torch.randn(2, 3, 8, 4)
    with torch.no_grad():
        torch.testing.assert_close(model(x), zeroed(x))

    # Checkpoint rebuilding: a full-width network takes the stored widths, then the weights.
    rebuilt = apply_widths(_net(), module_widths(model)).eval()
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))


def test_register_checks_its_arguments(table):
    with pytest.raises(TypeError, match="nn.Module class"):
        register(int, POINTWISE)
    with pytest.raises(TypeError, match="LayerKind"):
        register(Pointwise, "pointwise")
    other = LayerKind("conv", PRODUCER, widths=POINTWISE.widths, resized=POINTWISE.resized, geometry=POINTWISE.geometry)
    with pytest.raises(ValueError, match="'conv' is taken"):
        register(Pointwise, other)
    assert Pointwise not in table
    with pytest.raises(ValueError, match="role"):
        LayerKind("x", "mixer", widths=POINTWISE.widths, resized=POINTWISE.resized)
    with pytest.raises(ValueError, match="geometry"):
        LayerKind("x", PRODUCER, widths=POINTWISE.widths, resized=POINTWISE.resized)
    with pytest.raises(ValueError, match="both timing and op"):
        LayerKind("x", PRODUCER, widths=POINTWISE.widths, resized=POINTWISE.resized, geometry=POINTWISE.geometry,
                  timing=lambda m: {})
