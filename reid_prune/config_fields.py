"""Typed fields for configuration dataclasses: declared choices and ranges, and checked merging of nested dicts.

:mod:`reid_prune.config` declares its schema with :func:`choice` and :func:`number_range`;
:func:`merge` writes a nested dict (a parsed YAML file or a ``--set``) into the dataclasses,
checking each key and type, and :func:`check_fields` checks every declared choice and range.
Errors name the dotted key path::

    config key train.lr: expected a number, got 'fast'
    config key train.gamma: must lie in (0, 1], got -0.1

Sections may also be lists of dataclasses (``list[Entry]``) or optional ones (``Entry | None``);
an item that is not a mapping is read as ``{Entry.SHORTHAND: item}`` (e.g. a bench file's
``methods: [haoli]``). ``noun`` names the kind of key in errors (``config key``, ``bench key``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import field
from typing import Any

NOUN = "config key"


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the key and the fix."""


def require(ok: bool, path: str, message: str) -> None:
    """Raise ``ConfigError("config key PATH: MESSAGE")`` unless ``ok``: a rule between keys."""
    if not ok:
        raise ConfigError(f"{NOUN} {path}: {message}")


def choice(default: Any, *choices: Any, aliases: dict[Any, Any] | None = None) -> Any:
    """A field that must be one of ``choices`` (strings, booleans, or numbers such as a paper's year).

    ``aliases`` maps other accepted values (old spellings, e.g. ``train.amp: true``) onto a choice.
    """
    return field(default=default, metadata={"choices": choices, "aliases": aliases or {}})


def _same(value: Any, option: Any) -> bool:
    """Equal and of the same type: 1 is not true."""
    return type(value) is type(option) and value == option


def _show(value: Any) -> str:
    """A value as YAML spells it (true, not True)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def number_range(default: Any, low: float | None = None, high: float | None = None, *, low_open: bool = False,
                 high_open: bool = False, what: str = "") -> Any:
    """A number (or each number of a list) that must lie between ``low`` and ``high``; None is always allowed.

    ``what`` names the quantity in the error message, e.g. "a prune fraction".
    """
    metadata = {"range": (low, high, low_open, high_open), "what": what}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _type_name(tp: Any) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    if tp in names:
        return names[tp]
    origin = typing.get_origin(tp)
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is dict or dataclasses.is_dataclass(tp):
        return "a mapping"
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    return str(tp)


def _coerce(value: Any, tp: Any, path: str, noun: str = NOUN) -> Any:
    """Check ``value`` against annotation ``tp``: ints count as numbers; NaN and infinity are refused anywhere."""
    _check_finite(value, path, noun)
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _section(tp, value, path, noun)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is type(None) and value is None:
                return None
        for arg in typing.get_args(tp):
            if dataclasses.is_dataclass(arg):  # a section's own errors name its keys: let them through
                return _coerce(value, arg, path, noun)
            if arg is not type(None):
                try:
                    return _coerce(value, arg, path, noun)
                except ConfigError:
                    pass
    elif origin is list:
        if isinstance(value, (list, tuple)):
            (item_tp,) = typing.get_args(tp)
            return [_coerce(v, item_tp, f"{path}[{i}]", noun) for i, v in enumerate(value)]
    elif origin is dict:
        if isinstance(value, dict):
            return dict(value)
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{noun} {path}: expected {_type_name(tp)}, got {value!r}")


def _section(tp: type, value: Any, path: str, noun: str) -> Any:
    """A new ``tp`` section with ``value`` merged in; a non-mapping is ``{tp.SHORTHAND: value}`` when declared."""
    shorthand = getattr(tp, "SHORTHAND", None)
    if not isinstance(value, dict) and shorthand is not None:
        value = {shorthand: value}
    section = tp()
    merge(section, value, f"{path}.", noun=noun)
    return section


def _check_finite(value: Any, path: str, noun: str = NOUN) -> None:
    """Refuse NaN and infinity anywhere in ``value`` (a number, or nested lists and mappings)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{noun} {path}: expected a finite number, got {value}")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_finite(item, f"{path}.{key}", noun)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_finite(item, f"{path}[{i}]", noun)


def merge(obj: Any, values: dict[str, Any], prefix: str = "", *, noun: str = NOUN) -> None:
    """Write ``values`` (nested dicts) into the dataclass ``obj``, checking keys and types."""
    if not isinstance(values, dict):
        raise ConfigError(f"{noun} {prefix.rstrip('.') or '<root>'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(type(obj))
    fields = {f.name: f for f in dataclasses.fields(obj)}
    names = list(fields)
    for key, value in values.items():
        path = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; valid keys: {', '.join(prefix + n for n in names)}"
            raise ConfigError(f"{noun} {path} is not a valid key{hint}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current) and not (value is None and _optional(hints[key])):
            merge(current, value, f"{path}.", noun=noun)
            continue
        if isinstance(current, dict) and isinstance(value, dict):
            # Free-form mappings (prune.options) merge key by key, so several --set options add up.
            _check_finite(value, path, noun)
            setattr(obj, key, {**current, **value})
            continue
        # Old spellings of a choice (train.amp: true) become the current one before the type check.
        aliases = fields[key].metadata.get("aliases", {})
        value = next((new for old, new in aliases.items() if _same(value, old)), value)
        setattr(obj, key, _coerce(value, hints[key], path, noun))


def _optional(tp: Any) -> bool:
    """Whether annotation ``tp`` admits None."""
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _number(x: float) -> str:
    # Integers in full (a seed bound of 2147483647, not 2.14748e+09); floats short.
    return str(x) if isinstance(x, int) else f"{x:g}"


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if high is None:
        return f"be {'>' if low_open else '>='} {_number(low)}"
    if low is None:
        return f"be {'<' if high_open else '<='} {_number(high)}"
    return f"lie in {'(' if low_open else '['}{_number(low)}, {_number(high)}{')' if high_open else ']'}"


def check_fields(obj: Any, prefix: str = "", *, noun: str = NOUN) -> None:
    """Check every declared choice and range of ``obj`` and its nested sections (lists of sections too)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            check_fields(value, f"{path}.", noun=noun)
        elif isinstance(value, list) and any(dataclasses.is_dataclass(item) for item in value):
            for i, item in enumerate(value):
                check_fields(item, f"{path}[{i}].", noun=noun)
        elif "choices" in f.metadata and not any(_same(value, c) for c in f.metadata["choices"]):
            choices = [_show(c) for c in f.metadata["choices"]]
            close = difflib.get_close_matches(str(value), choices, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{noun} {path}: expected one of {', '.join(choices)}, got {value!r}{hint}")
        elif "range" in f.metadata:
            low, high, low_open, high_open = f.metadata["range"]
            items = value if isinstance(value, list) else [value]
            for i, item in enumerate(items):
                if item is None:
                    continue
                below = low is not None and (item <= low if low_open else item < low)
                above = high is not None and (item >= high if high_open else item > high)
                if below or above:
                    where = f"{path}[{i}]" if isinstance(value, list) else path
                    what = f"{f.metadata['what']} " if f.metadata["what"] else ""
                    raise ConfigError(f"{noun} {where}: {what}must {_interval(low, high, low_open, high_open)}, "
                                      f"got {item!r}")


# Classes of config keys, declared as tags on the fields where the keys are defined. Each consumer
# asks for its class with :func:`tagged_keys`, so a new key is classified once, beside its default.
TAGS = {
    "runtime": "changes how fast a run goes or what it prints, never the weights: a resumed run may change it",
    "resumable": "how long a run goes or how it is watched: a resumed run may change it too",
    "unhashed": "changes how fast a bench cell runs, not what it computes: left out of the cell's key",
    "later": "added after the first benches ran: left out of a cell's key while at its default",
    "eval_only": "changes only how a finished model is scored: the bench re-scores instead of retraining",
    "not_training": "training never reads it (a section or key of pruning or scoring): a resume does not compare it",
}


def tagged(default: Any, *tags: str) -> Any:
    """A field (``default`` a value, or a field made by :func:`choice`, :func:`number_range` or
    ``dataclasses.field``) that carries ``tags``, classes of :data:`TAGS` read by :func:`tagged_keys`."""
    unknown = set(tags) - set(TAGS)
    if unknown:
        raise ValueError(f"unknown config key tags {sorted(unknown)}; known: {', '.join(TAGS)}")
    if not isinstance(default, dataclasses.Field):
        return field(default=default, metadata={"tags": tags})
    kwargs = {"default": default.default} if default.default is not dataclasses.MISSING else {
        "default_factory": default.default_factory}
    return field(**kwargs, metadata={**default.metadata, "tags": tags})


def tagged_keys(obj: Any, tag: str, prefix: str = "") -> tuple[str, ...]:
    """Dotted keys of ``obj`` (a dataclass instance, sections included) whose field carries ``tag``.

    A tagged section gives its prefix (``"prune."``); keys are in declaration order.
    """
    keys: list[str] = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if tag in f.metadata.get("tags", ()):
            keys.append(f"{prefix}{f.name}." if dataclasses.is_dataclass(value) else f"{prefix}{f.name}")
        elif dataclasses.is_dataclass(value):
            keys.extend(tagged_keys(value, tag, f"{prefix}{f.name}."))
    return tuple(keys)
