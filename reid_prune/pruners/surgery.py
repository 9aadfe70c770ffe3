"""Physical channel removal: replace layers by smaller ones, no masks left behind.

:func:`prune_group` rebuilds every producer, norm and consumer of a
:class:`~reid_prune.pruners.groups.ChannelGroup` as a new, smaller ``nn.Conv2d`` /
``nn.Linear`` / ``nn.BatchNorm1d/2d`` (any type in :mod:`reid_prune.layers`'s table)
holding the kept slices of the weights, biases and running statistics. Parameter counts,
``state_dict`` sizes, file sizes and MACs shrink, and
:func:`reid_prune.checkpoint.save_checkpoint` records the new widths, so
:func:`reid_prune.checkpoint.load_model` rebuilds the pruned network by itself.

Surgery creates new ``nn.Parameter`` objects and new modules: an optimiser (or anything
else holding the old parameters, modules or hooks) must be rebuilt after it. Groups
describe the widths they were found at: after surgery call
:func:`~reid_prune.pruners.groups.find_channel_groups` again before pruning further.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..layers import NORM, LayerKind, kind_of
from .groups import ChannelGroup


def _as_index(indices: Sequence[int] | Tensor, channels: int, what: str) -> Tensor:
    """Check channel indices and return them as a sorted 1-D long tensor."""
    index = torch.as_tensor(indices)
    if index.numel() and (index.is_floating_point() or index.is_complex() or index.dtype == torch.bool):
        raise TypeError(f"{what}: channel indices must be integers, got dtype {index.dtype}")
    index = index.reshape(-1).long()
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= channels):
        bad = index[(index < 0) | (index >= channels)][:5].tolist()
        raise IndexError(f"{what}: channel indices {bad} are outside 0..{channels - 1}")
    sorted_index = torch.unique(index)  # sorted
    if sorted_index.numel() != index.numel():
        raise ValueError(f"{what}: channel indices repeat; give each channel once")
    return sorted_index


def _check_widths(model: nn.Module, group: ChannelGroup) -> None:
    """The layers still have the group's width (a group found before earlier surgery is stale)."""
    for role, names in (("producer", group.producers), ("norm", group.norms), ("consumer", group.consumers)):
        for name in names:
            try:
                module = model.get_submodule(name)
            except AttributeError:
                raise ValueError(f"group {group.name!r}: the model has no layer {name!r}") from None
            width = _width(module, role)
            if width != group.channels:
                raise ValueError(
                    f"group {group.name!r} has {group.channels} channels but {role} {name!r} has {width}: "
                    "the group is stale (found before earlier surgery?); call find_channel_groups again"
                )


def _kind(module: nn.Module) -> LayerKind:
    kind = kind_of(module)
    if kind is None:
        raise TypeError(f"cannot prune channels of {type(module).__name__}")
    return kind


def _width(module: nn.Module, role: str) -> int:
    """The width ``role`` cuts: a consumer's input channels, a producer's or a norm's output channels."""
    widths = _kind(module).widths(module)
    return widths[1] if role == "consumer" else widths[0]


def _sliced(module: nn.Module, role: str, index: Tensor) -> nn.Module:
    """A new module like ``module`` keeping channels ``index``: its inputs for a consumer, else its outputs."""
    if role == "consumer":
        return _kind(module).sliced(module, keep_in=index)
    return _kind(module).sliced(module, keep_out=index)


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _prune_checked(model: nn.Module, group: ChannelGroup, keep: Tensor) -> None:
    for role, names in (("producer", group.producers), ("norm", group.norms), ("consumer", group.consumers)):
        for name in names:
            _replace(model, name, _sliced(model.get_submodule(name), role, keep))


def prune_group(model: nn.Module, group: ChannelGroup, keep: Sequence[int] | Tensor) -> None:
    """Remove, in place, every channel of ``group`` not in ``keep``.

    Producers lose output channels (Conv2d weight (out, in, kh, kw) -> (len(keep), in, kh, kw),
    bias (out,) -> (len(keep),); Linear weight (out, in) -> (len(keep), in)), norms lose features
    (weight, bias, running_mean, running_var: (C,) -> (len(keep),)) and consumers lose input
    channels (weight dim 1). Each layer is replaced by a new module with the same
    hyperparameters, ``training`` mode and ``requires_grad`` flags (the BNNeck's frozen bias
    stays frozen).

    Args:
        model: the network the group was found on, at the group's width.
        group: the channels to cut.
        keep: indices of the channels to keep, each once (sorted here), at least one.

    Raises:
        ValueError: ``keep`` is empty or repeats an index, or the group is stale.
        IndexError: an index is outside ``0..group.channels-1``.
    """
    index = _as_index(keep, group.channels, f"group {group.name!r}")
    if index.numel() == 0:
        raise ValueError(f"group {group.name!r}: keep is empty; keep at least one channel")
    _check_widths(model, group)
    _prune_checked(model, group, index)


def apply_plan(model: nn.Module, groups: Sequence[ChannelGroup],
               plan: Mapping[str, Sequence[int] | Tensor]) -> nn.Module:
    """Apply a pruning plan in place and return ``model``.

    Args:
        model: the network ``groups`` were found on.
        groups: its channel groups (:func:`~reid_prune.pruners.groups.find_channel_groups`).
        plan: {group name: indices of the channels to KEEP}; groups not named keep all channels.

    The whole plan is checked before any layer changes, so bad input never leaves a
    half-pruned model. Optimisers must be rebuilt afterwards (the parameters are new).

    Raises:
        ValueError: a name in ``plan`` is not a group, a keep list is empty or repeats an
            index, or a group is stale.
        IndexError: an index is out of range.
    """
    by_name = {g.name: g for g in groups}
    unknown = sorted(set(plan) - set(by_name))
    if unknown:
        raise ValueError(f"pruning plan names unknown groups {unknown[:5]}; known groups: {sorted(by_name)[:8]} ...")
    checked = []
    for name, keep in plan.items():
        group = by_name[name]
        index = _as_index(keep, group.channels, f"group {name!r}")
        if index.numel() == 0:
            raise ValueError(f"pruning plan: group {name!r} keeps no channel; keep at least one")
        _check_widths(model, group)
        checked.append((group, index))
    for group, index in checked:
        if index.numel() < group.channels:
            _prune_checked(model, group, index)
    return model


def zero_group(model: nn.Module, group: ChannelGroup, drop: Sequence[int] | Tensor, *, norms: bool = True) -> None:
    """Zero channels ``drop`` of ``group`` without removing them (the soft counterpart of surgery).

    Zeroes the producers' filters (weight rows and bias entries) and, with ``norms``, the
    affine weight and bias of every norm on the group (the BN after each producer and, for
    the last stage, the BNNeck). With ``norms`` a zeroed channel is exactly 0 after every BN,
    whatever the running statistics, so removing it later with :func:`prune_group` leaves the
    outputs unchanged. Without it (what SFP's reference zeroes: the conv filter only) the BN
    shift still gives the channel a constant, and the filter can regrow under training.
    Consumers are not touched.

    Raises:
        ValueError: ``norms`` and a norm has no affine parameters (its channel could not be silenced).
        IndexError: an index is out of range.
    """
    index = _as_index(drop, group.channels, f"group {group.name!r}")
    _check_widths(model, group)
    if index.numel() == 0:
        return
    with torch.no_grad():
        for name in group.producers + (group.norms if norms else []):
            module = model.get_submodule(name)
            if _kind(module).role == NORM and not module.affine:
                raise ValueError(f"{name} has no affine weight and bias, so its channels cannot be zeroed")
            for param in (module.weight, module.bias):
                if param is not None:
                    param.index_fill_(0, index.to(param.device), 0.0)
