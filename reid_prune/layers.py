"""The one table of channel-carrying layer types: everything the package knows about each.

Pruning removes channels from a few layer types only: ``nn.Conv2d``, ``nn.Linear``,
``nn.BatchNorm1d`` and ``nn.BatchNorm2d``. Each is described once here by a
:class:`LayerKind` of plain functions (how to read its widths, build it at other widths,
its MAC geometry, its latency-table signature) and :meth:`LayerKind.sliced` (keep some of
its channels). The tracer, surgery, checkpoints, the MACs/params model and the latency
table all look layers up with :func:`kind_of`, so supporting one more layer type is one
:func:`register` call, as Torch-Pruning's one table of per-layer pruners with its
``register_customized_layer``::

    register(MyPointwise, LayerKind("pointwise", PRODUCER, widths=..., resized=..., geometry=...))

A kind has one of two roles, and its modules must follow that role's layout, which
:meth:`LayerKind.sliced`, surgery's zeroing and the MACs/params model rely on:

* :data:`PRODUCER` mixes channels: ``widths`` is (out, in); ``weight`` is
  (out, in / groups, *kernel) and ``bias`` (out,) or None.
* :data:`NORM` acts on each channel alone (BatchNorm's interface): ``widths`` is (C,);
  ``affine``; ``weight`` and ``bias`` (C,) or None; ``running_mean`` and ``running_var``
  (C,) or None; ``num_batches_tracked`` (a scalar) or None.

This module imports only torch: it is the bottom of the package's layering.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

PRODUCER = "producer"
NORM = "norm"
ROLES = (PRODUCER, NORM)

Device = str | torch.device | None


@dataclass(frozen=True)
class LayerKind:
    """What the package needs to know about one channel-carrying layer type.

    Attributes:
        name: the kind's name, unique in the table; for timed kinds also the ``kind`` of
            their latency-table signature (``conv``, ``linear``), so it is part of the cache keys.
        role: :data:`PRODUCER` or :data:`NORM` (see the module docstring for each one's layout).
        widths: module -> its channel widths, (out, in) for a producer, (C,) for a norm.
        resized: (module, widths, device) -> a new module with ``module``'s hyper-parameters
            at ``widths`` (as ``widths`` gives them), freshly initialised on ``device`` (None:
            torch's default), with ``module``'s ``training`` mode and ``requires_grad`` flags
            (:func:`copy_flags`). On the meta device it allocates nothing; it must hold no
            tensors but those of its role's layout, which :meth:`sliced` replaces.
        geometry: producers only: module -> (groups, kernel elements), so one output channel
            costs in / groups * kernel multiply-accumulates per output position.
        channels_dim: the dim of the layer's input that holds its channels: 1 for
            (N, C, ...) inputs, -1 for a Linear's (N, ..., F).
        timing: timed producers only: module -> the keyword fields of its latency-table
            signature besides widths and input size (``kernel``, ``stride``, ``padding``,
            ``dilation``, ``groups``, ``bias``); raises ValueError for a module that cannot
            be timed standalone. None: the layer is not timed (norms).
        op: timed producers only: (in_channels, out_channels, **timing fields) -> the
            standalone op the latency table times, the inverse of ``timing``.
    """

    name: str
    role: str
    widths: Callable[[nn.Module], tuple[int, ...]]
    resized: Callable[[nn.Module, Sequence[int], Device], nn.Module]
    geometry: Callable[[nn.Module], tuple[int, int]] | None = None
    channels_dim: int = 1
    timing: Callable[[nn.Module], dict[str, Any]] | None = None
    op: Callable[..., nn.Module] | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"layer kind {self.name!r}: role must be one of {ROLES}, got {self.role!r}")
        if self.role == PRODUCER and self.geometry is None:
            raise ValueError(f"layer kind {self.name!r}: a producer needs its geometry (groups, kernel elements)")
        if (self.timing is None) != (self.op is None):
            raise ValueError(f"layer kind {self.name!r}: give both timing and op, or neither")

    def sliced(self, module: nn.Module, keep_out: Sequence[int] | Tensor | None = None,
               keep_in: Sequence[int] | Tensor | None = None) -> nn.Module:
        """A new module like ``module`` holding only the kept channels of its tensors.

        Built with ``resized`` on the meta device (nothing is initialised), then given index
        selections of ``module``'s tensors: weight dim 0 by ``keep_out`` and dim 1 by
        ``keep_in``; bias and a norm's running statistics dim 0 by ``keep_out``. A tensor
        that keeps every channel is shared, not copied (a consumer keeps its very bias);
        a channels-last 4-D weight stays channels-last; ``requires_grad`` is kept.

        Args:
            module: a module of this kind.
            keep_out: indices of the output channels (a norm's channels) to keep, each once,
                sorted; None keeps all. Not checked here (surgery checks them).
            keep_in: a producer's input channels to keep, likewise; None for a norm.

        Raises:
            ValueError: ``keep_in`` for a norm.
            NotImplementedError: the module cannot be resized (a grouped convolution).
        """
        out_index = None if keep_out is None else torch.as_tensor(keep_out, dtype=torch.long)
        in_index = None if keep_in is None else torch.as_tensor(keep_in, dtype=torch.long)
        widths = list(self.widths(module))
        if out_index is not None:
            widths[0] = len(out_index)
        if in_index is not None:
            if self.role == NORM:
                raise ValueError(f"{type(module).__name__} has one channel dim: slice it with keep_out only")
            widths[1] = len(in_index)
        new = self.resized(module, widths, "meta")
        new.weight = _kept(module.weight, out_index, in_index)
        new.bias = _kept(module.bias, out_index, None)
        if self.role == NORM:
            for name in ("running_mean", "running_var"):
                buffer = getattr(module, name)
                kept = buffer if buffer is None or out_index is None else buffer.index_select(
                    0, out_index.to(buffer.device))
                setattr(new, name, kept)
            if module.num_batches_tracked is not None:
                new.num_batches_tracked = module.num_batches_tracked.clone()
        return new


def _kept(param: Tensor | None, keep_out: Tensor | None, keep_in: Tensor | None) -> Tensor | None:
    """``param`` with dim 0 cut to ``keep_out`` and dim 1 to ``keep_in``, as a new Parameter; itself when uncut."""
    if param is None or (keep_out is None and keep_in is None):
        return param
    kept = param.detach()
    for dim, index in ((0, keep_out), (1, keep_in)):
        if index is not None:
            kept = kept.index_select(dim, index.to(param.device))
    # index_select returns NCHW: a channels-last model must stay channels-last.
    if param.dim() == 4 and not param.is_contiguous() and param.is_contiguous(memory_format=torch.channels_last):
        kept = kept.contiguous(memory_format=torch.channels_last)
    return nn.Parameter(kept, requires_grad=param.requires_grad)


def copy_flags(new: nn.Module, module: nn.Module) -> nn.Module:
    """``new`` (returned) given ``module``'s ``training`` mode and its parameters' ``requires_grad`` flags.

    What every ``resized`` must do, so a resized layer trains as before (the BNNeck's bias stays frozen).
    """
    flags = {name: p.requires_grad for name, p in module.named_parameters(recurse=False)}
    for name, p in new.named_parameters(recurse=False):
        p.requires_grad_(flags.get(name, p.requires_grad))
    return new.train(module.training)


def _conv_resized(module: nn.Conv2d, widths: Sequence[int], device: Device = None) -> nn.Conv2d:
    out_c, in_c = widths
    if module.groups != 1:
        # in / groups would have to stay a whole number for every kept set: not supported.
        raise NotImplementedError(f"grouped convolution (groups={module.groups}) cannot be resized or pruned")
    new = nn.Conv2d(in_c, out_c, module.kernel_size, module.stride, module.padding, module.dilation,
                    bias=module.bias is not None, padding_mode=module.padding_mode, device=device)
    return copy_flags(new, module)


def _conv_timing(module: nn.Conv2d) -> dict[str, Any]:
    if not isinstance(module.padding, tuple) or module.padding_mode != "zeros":
        raise ValueError(f"latency tables time convs with numeric zero padding, got {module}")
    return {"kernel": module.kernel_size, "stride": module.stride, "padding": module.padding,
            "dilation": module.dilation, "groups": module.groups, "bias": module.bias is not None}


def _conv_op(in_channels: int, out_channels: int, *, kernel: tuple[int, ...], stride: tuple[int, ...],
             padding: tuple[int, ...], dilation: tuple[int, ...], groups: int, bias: bool) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel, stride, padding, dilation, groups, bias=bias)


def _linear_resized(module: nn.Linear, widths: Sequence[int], device: Device = None) -> nn.Linear:
    out_f, in_f = widths
    return copy_flags(nn.Linear(in_f, out_f, bias=module.bias is not None, device=device), module)


def _linear_op(in_channels: int, out_channels: int, *, bias: bool, **_: Any) -> nn.Linear:
    return nn.Linear(in_channels, out_channels, bias=bias)


def _norm_resized(module: nn.Module, widths: Sequence[int], device: Device = None) -> nn.Module:
    (channels,) = widths
    new = type(module)(channels, eps=module.eps, momentum=module.momentum, affine=module.affine,
                       track_running_stats=module.track_running_stats, device=device)
    return copy_flags(new, module)


CONV = LayerKind(
    "conv", PRODUCER,
    widths=lambda m: (m.out_channels, m.in_channels),
    resized=_conv_resized,  # always an nn.Conv2d, as a subclass's constructor may differ
    geometry=lambda m: (m.groups, math.prod(m.kernel_size)),
    timing=_conv_timing,
    op=_conv_op,
)
LINEAR = LayerKind(
    "linear", PRODUCER,
    widths=lambda m: (m.out_features, m.in_features),
    resized=_linear_resized,
    geometry=lambda m: (1, 1),
    channels_dim=-1,
    timing=lambda m: {"kernel": (), "stride": (), "padding": (), "dilation": (), "groups": 1,
                      "bias": m.bias is not None},
    op=_linear_op,
)
BATCHNORM = LayerKind(
    "batchnorm", NORM,
    widths=lambda m: (m.num_features,),
    resized=_norm_resized,  # type(module): BatchNorm1d stays 1d, 2d stays 2d
)

# The table: {layer type: kind}. Subclasses of a listed type share its kind (see kind_of).
KINDS: dict[type[nn.Module], LayerKind] = {
    nn.Conv2d: CONV,
    nn.Linear: LINEAR,
    nn.BatchNorm1d: BATCHNORM,
    nn.BatchNorm2d: BATCHNORM,
}

# The built-in types of each role, for isinstance checks. Types added by register() are not in
# them (a tuple cannot grow): code that must see those calls kind_of.
PRODUCERS = tuple(t for t, k in KINDS.items() if k.role == PRODUCER)
NORMS = tuple(t for t, k in KINDS.items() if k.role == NORM)


def kind_of(module: nn.Module) -> LayerKind | None:
    """The kind of ``module``: that of the first registered type in ``type(module).__mro__``.

    The exact type wins, then the nearest registered base class, so a Conv2d subclass is a
    conv (as ``isinstance`` would say) unless its own type is registered. None when no type
    in its ancestry is registered (the layer carries no prunable channels).
    """
    for cls in type(module).__mro__:
        kind = KINDS.get(cls)
        if kind is not None:
            return kind
    return None


def kind_named(name: str) -> LayerKind:
    """The registered kind called ``name`` (a latency signature's ``kind``).

    Raises:
        ValueError: no registered kind has this name.
    """
    for kind in KINDS.values():
        if kind.name == name:
            return kind
    raise ValueError(f"no layer kind is named {name!r}; registered: {sorted({k.name for k in KINDS.values()})}")


def register(module_type: type[nn.Module], kind: LayerKind) -> None:
    """Make ``module_type`` (and its subclasses without a kind of their own) a channel-carrying layer.

    Replaces the kind of a type registered before. The tracer, surgery, checkpoints and the
    MACs/params model then handle it, and latency budgets too when the kind has ``timing``
    and ``op``.

    Raises:
        TypeError: ``module_type`` is not an ``nn.Module`` class or ``kind`` not a :class:`LayerKind`.
        ValueError: another kind already has ``kind.name``.
    """
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise TypeError(f"register: expected an nn.Module class, got {module_type!r}")
    if not isinstance(kind, LayerKind):
        raise TypeError(f"register: expected a LayerKind, got {type(kind).__name__}")
    clash = [t.__name__ for t, k in KINDS.items() if k.name == kind.name and k != kind and t is not module_type]
    if clash:
        raise ValueError(f"register: the kind name {kind.name!r} is taken by {clash}; give the kind another name")
    KINDS[module_type] = kind


def role_widths(role: str, out_channels: int, in_channels: int) -> tuple[int, ...]:
    """The widths a layer of ``role`` has, as :attr:`LayerKind.widths` gives them: (out, in) or (C,) for a norm."""
    return (out_channels,) if role == NORM else (out_channels, in_channels)
