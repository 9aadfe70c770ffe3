"""The front door's argument checks: a public call is refused, naming the argument, before it does any work.

The command line checks its flags with argparse and the config schema; a call from a notebook
gets the same care here. :func:`checked` wraps a function so that each call is checked
against its signature and type hints before it runs:

* an unknown keyword is named, with the closest valid one (``target_mac`` -> ``target_macs``),
  including the names a function takes through ``**kwargs`` when it declares them (``prune``
  passes method options and the :class:`~reid_prune.pruners.Pruner`'s settings on);
* each value must be of its annotated type: ``True`` is not a number (it would read as 1.0),
  ``"0.5"`` is not a number, ``128`` is not a pair of integers, a dict is not a ``Config``;
  numbers must be finite;
* integers with a lower bound on the command line (``--topk``, ``--batch-size``, ...) keep it.

Ranges and rules between arguments stay with the functions themselves (they give the command
line's messages already); this module stops the calls that would otherwise fail deep inside
with an AttributeError or a TypeError naming nothing the caller wrote.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import functools
import inspect
import math
import numbers
import os
import reprlib
import types
import typing
from typing import Any, Callable, Mapping

import numpy as np

# Lower bounds of numeric arguments, (bound, strict), as the command line's flags declare them (argtypes'
# int_at_least and positive_number; tests/test_api_arguments.py holds the two to the same numbers).
BOUNDS: dict[str, dict[str, tuple[float, bool]]] = {
    "sensitivity_checkpoint": {"subset_ids": (0, False), "seed": (0, False)},
    "visrank_checkpoint": {"queries": (1, False), "topk": (1, False), "seed": (0, False)},
    "extract_checkpoint": {"batch_size": (1, False), "workers": (0, False)},
    "export_checkpoint": {"threads": (1, False), "tolerance": (0, True)},
}
# Arguments that are an image size (height, width) in pixels: a zero or negative side would fail deep in a
# convolution or the tracer, naming nothing the caller wrote.
PIXEL_SIZES = frozenset({"input_size"})
# Mappings that must name something: an empty layer_rates would return an unpruned copy without a word
# (the command line refuses an empty --layer-rates file too).
NON_EMPTY = frozenset({"layer_rates"})
_SHOW = reprlib.Repr()
_SHOW.maxstring = _SHOW.maxother = 60
_SEQUENCES = (collections.abc.Sequence, list, tuple)


def checked(func: Callable, *, extra: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None) -> Callable:
    """``func`` with its arguments checked by :func:`check_call` before every call.

    ``extra``: for a function with ``**kwargs``, the names it accepts there and their types
    (``Any`` where another check follows), from the arguments bound so far; None accepts any name.
    """

    @functools.wraps(func)
    def call(*args: Any, **kwargs: Any) -> Any:
        check_call(func, args, kwargs, extra=extra)
        return func(*args, **kwargs)

    return call


def check_call(func: Callable, args: tuple, kwargs: Mapping[str, Any], *,
               extra: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None) -> None:
    """Check a call of ``func``: every keyword known, every value of its annotated type and bound.

    Raises:
        TypeError: an unknown keyword (with the closest valid name), a missing or extra argument,
            or a value of the wrong type; the message starts with ``name():`` and names the argument.
        ValueError: a number below its bound in :data:`BOUNDS`, a number that is NaN or infinite, or an image
            size (:data:`PIXEL_SIZES`) with a side below 1 pixel, or an empty mapping in :data:`NON_EMPTY`.
    """
    name = func.__name__
    signature = inspect.signature(func)
    params = signature.parameters
    named = [p for p, spec in params.items() if spec.kind not in (spec.VAR_POSITIONAL, spec.VAR_KEYWORD)]
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as err:
        takes_any = any(spec.kind is spec.VAR_KEYWORD for spec in params.values())
        unknown = [k for k in kwargs if k not in params]
        if unknown and not takes_any:
            raise TypeError(f"{name}(): {unknown_keyword(unknown[0], named)}") from None
        raise TypeError(f"{name}(): {err}") from None
    hints = type_hints(func)
    for arg, value in bound.arguments.items():
        kind = params[arg].kind
        if kind is params[arg].VAR_POSITIONAL:
            continue
        if kind is params[arg].VAR_KEYWORD:
            accepted = extra(bound.arguments) if extra is not None else None
            for key, item in value.items():
                if accepted is not None and key not in accepted:
                    raise TypeError(f"{name}(): {unknown_keyword(key, named + list(accepted))}")
                check_value(name, key, item, Any if accepted is None else accepted[key])
            continue
        check_value(name, arg, value, hints.get(arg, Any))


def unknown_keyword(key: str, valid: list[str]) -> str:
    """``unknown argument 'target_mac'; did you mean 'target_macs'?`` (or the valid names, when none is close)."""
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"valid keyword arguments: {', '.join(sorted(set(valid)))}"
    return f"unknown argument {key!r}; {hint}"


@functools.lru_cache(maxsize=None)
def type_hints(func: Callable) -> dict[str, Any]:
    """The resolved annotations of a function or class; none when they cannot be resolved
    (tests/test_api_arguments.py checks that every public function's can)."""
    try:
        return typing.get_type_hints(func)
    except Exception:  # a name imported only for type checkers: check names and bounds, not types
        return {}


def check_value(name: str, arg: str, value: Any, hint: Any) -> None:
    """Raise when ``value`` is not of type ``hint``, is a non-finite number, or is below ``arg``'s bound."""
    if not matches(value, hint):
        raise TypeError(f"{name}(): {arg}: expected {describe(hint)}, got {show(value)}")
    for number in _numbers(value):
        if not math.isfinite(number):
            raise ValueError(f"{name}(): {arg}: expected a finite number, got {number}")
    bound = BOUNDS.get(name, {}).get(arg)
    if bound is not None and isinstance(value, numbers.Real):
        low, strict = bound
        if value < low or (strict and value == low):
            raise ValueError(f"{name}(): {arg}: must be {'>' if strict else '>='} {low}, got {value}")
    if arg in PIXEL_SIZES and isinstance(value, _SEQUENCES) and any(side < 1 for side in value):
        raise ValueError(f"{name}(): {arg}: expected (height, width) in pixels, each >= 1, got {show(value)}")
    if arg in NON_EMPTY and isinstance(value, collections.abc.Mapping) and not value:
        raise ValueError(f"{name}(): {arg}: empty, so nothing would be pruned; give {{group name: prune rate}}, "
                         "e.g. {'layer1.0.conv1': 0.3}, or another target (rate, target_macs, ...)")


def _numbers(value: Any) -> list[float]:
    """The floats in ``value`` (a number, or a list or tuple of them)."""
    items = value if isinstance(value, (list, tuple)) else [value]
    return [float(v) for v in items if isinstance(v, (float, np.floating))]


def _is_bool(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_))


def _is_path(tp: Any) -> bool:
    return isinstance(tp, type) and (tp is os.PathLike or issubclass(tp, os.PathLike))


def matches(value: Any, tp: Any) -> bool:
    """Whether ``value`` is of annotated type ``tp``; ints are numbers, booleans are not; unknown forms pass."""
    if tp is Any or tp is inspect.Parameter.empty:
        return True
    if tp is None or tp is type(None):
        return value is None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, arg) for arg in args)
    if origin is typing.Literal:
        return value in args
    if tp is bool:
        return _is_bool(value)
    if tp is int:
        return isinstance(value, numbers.Integral) and not _is_bool(value)
    if tp is float:
        return isinstance(value, numbers.Real) and not _is_bool(value)
    if _is_path(tp):
        return isinstance(value, os.PathLike)
    if origin in _SEQUENCES or tp in _SEQUENCES:
        if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__len__") or not hasattr(value, "__iter__"):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(matches(v, a) for v, a in zip(value, args))
        return not args or all(matches(v, args[0]) for v in value)
    if origin in (dict, collections.abc.Mapping) or tp in (dict, Mapping):
        return isinstance(value, Mapping) and (not args or all(matches(k, args[0]) and matches(v, args[1])
                                                               for k, v in value.items()))
    if origin is collections.abc.Callable or tp is collections.abc.Callable:
        return callable(value)
    if origin is collections.abc.Iterable or tp is collections.abc.Iterable:
        return isinstance(value, collections.abc.Iterable) and not isinstance(value, (str, bytes))
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True  # a form these checks do not know (a TypeVar, a string left unresolved): the callee decides


_NAMES = {bool: "True or False", int: "an integer", float: "a number", str: "a string", type(None): "None"}
_PLURALS = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}
# Where a value of a package class comes from, for the caller who passed something else.
_SOURCES = {"Config": "a Config (reid_prune.load_config(...))", "DataConfig": "a DataConfig (a Config's .data)",
            "Module": "a torch.nn.Module (e.g. reid_prune.load_model(path))"}


def describe(tp: Any) -> str:
    """``tp`` in words, as the config's messages say it: ``a number or None``, ``a pair of integers``, ``a path``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if str in args and any(_is_path(a) for a in args):  # str | Path: one idea
            rest = [a for a in args if a is not str and not _is_path(a)]
            return " or ".join(["a path (a string or os.PathLike)"] + [describe(a) for a in rest])
        return " or ".join(dict.fromkeys(describe(a) for a in args))
    if tp in _NAMES:
        return _NAMES[tp]
    if _is_path(tp):
        return "a path (a string or os.PathLike)"
    if origin is tuple and args and args[-1] is not Ellipsis:
        same = len(set(args)) == 1 and args[0] in _PLURALS
        count = "a pair" if len(args) == 2 else f"a tuple of {len(args)}"
        return f"{count} of {_PLURALS[args[0]]}" if same else f"a tuple of {len(args)} values"
    if origin in _SEQUENCES or tp in _SEQUENCES:
        return f"a list of {_PLURALS.get(args[0], 'values')}" if args else "a list"
    if origin in (dict, collections.abc.Mapping) or tp in (dict, Mapping):
        return "a mapping"
    if origin is collections.abc.Callable or tp is collections.abc.Callable:
        return "a function"
    if origin is collections.abc.Iterable or tp is collections.abc.Iterable:
        return "an iterable (e.g. a DataLoader)"
    if isinstance(tp, type):
        return _SOURCES.get(tp.__name__, f"a {tp.__name__}")
    return str(tp)


def show(value: Any) -> str:
    """A short, readable ``value``: its repr when short and builtin, else its type."""
    if value is None or isinstance(value, (str, bytes, numbers.Number, bool, list, tuple, dict, set, os.PathLike)):
        return _SHOW.repr(value)
    return f"a {type(value).__name__}"


def pruner_keywords(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """What ``get_pruner(method, **config)`` accepts in ``config``: the Pruner's settings and the method's options.

    An unknown method is refused here, with the closest registered name.
    """
    from ..pruners import Pruner, get_method
    from ..pruners.registry import Method

    hints = type_hints(Pruner.__init__)
    settings = {n: hints.get(n, Any) for n, spec in inspect.signature(Pruner.__init__).parameters.items()
                if n not in ("self", "method") and spec.kind is not spec.VAR_KEYWORD}
    method = arguments.get("method")
    options: dict[str, Any] = {}
    if isinstance(method, (str, Method)):
        cls = (get_method(method) if isinstance(method, str) else method).options
        option_hints = type_hints(cls)
        options = {f.name: option_hints.get(f.name, Any) for f in dataclasses.fields(cls)}
    return {**settings, **options}


def prune_keywords(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """What ``prune(model, method, ...)`` accepts through ``**options``: the pruner's, and the context's settings."""
    from ..pruners import PruneContext

    hints = type_hints(PruneContext)
    context = {f.name: hints.get(f.name, Any) for f in dataclasses.fields(PruneContext) if f.init and f.name != "data"}
    return {**pruner_keywords(arguments), **context}
