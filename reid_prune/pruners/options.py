"""Typed method options: each method declares a dataclass, checked like any config key.

A method's options use the config schema's own field helpers, so a wrong option reads like
any other config error (``config key prune.options.decay is not a valid key``)::

    @dataclass
    class Options:
        bins: int = number_range(20, 2)                   # an integer >= 2
        curve: str = choice("paper", "paper", "lab")
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..config_fields import check_fields, choice, merge, number_range

__all__ = ["build_options", "choice", "number_range"]


def build_options(cls: type, values: Mapping[str, Any] | None, prefix: str) -> Any:
    """An instance of the options dataclass ``cls`` from ``values``, every name, type and range checked.

    Args:
        cls: the method's options dataclass.
        values: option name -> value; names not given keep their defaults.
        prefix: how errors name a key, e.g. ``"prune.options."``.

    Raises:
        ConfigError: an unknown name (with the closest valid one), a wrong type, or a value
            outside the field's range or choices.
    """
    options = cls()
    merge(options, dict(values or {}), prefix)
    check_fields(options, prefix)
    return options
