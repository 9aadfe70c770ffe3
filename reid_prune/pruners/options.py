"""Typed method options: each method declares a dataclass, checked once with errors that name the key.

A method's options are a plain dataclass whose fields may carry a range check::

    @dataclass
    class Options:
        decay: float = option(0.147, check=lambda v: 0 < v < 1, expect="a number in (0, 1)")
        curve: str = option("paper", choices=("paper", "lab"))

:func:`build_options` fills it from a mapping (a config's ``prune.options`` or keyword
arguments), reusing the config's own type checking, so a wrong option reads like any
other config error: ``config key prune.options.decay: expected a number, got 'fast'``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from ..config import ConfigError, merge_into


def option(default: Any, *, check: Callable[[Any], bool] | None = None, expect: str = "",
           choices: tuple[Any, ...] | None = None) -> Any:
    """A dataclass field with an optional range check (``check`` + the ``expect`` text) or ``choices``."""
    return dataclasses.field(default=default, metadata={"check": check, "expect": expect, "choices": choices})


def at_least(low: float) -> Callable[[Any], bool]:
    return lambda v: v is None or v >= low


def build_options(cls: type, values: Mapping[str, Any] | None, prefix: str) -> Any:
    """An instance of the options dataclass ``cls`` from ``values``, every key and range checked.

    Args:
        cls: the method's options dataclass.
        values: option name -> value; names not given keep their defaults.
        prefix: how errors name a key, e.g. ``"prune.options."`` or ``"fpgm option "``.

    Raises:
        ConfigError: an unknown name (with the closest valid one), a wrong type, or a value
            outside the field's range or choices.
    """
    options = cls()
    merge_into(options, dict(values or {}), prefix)
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        choices, check = f.metadata.get("choices"), f.metadata.get("check")
        if choices is not None and value not in choices:
            raise ConfigError(f"config key {prefix}{f.name}: expected one of {', '.join(map(str, choices))}, "
                              f"got {value!r}")
        if check is not None and not check(value):
            raise ConfigError(f"config key {prefix}{f.name}: expected {f.metadata['expect']}, got {value!r}")
    return options
