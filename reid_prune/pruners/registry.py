"""The registry of pruning methods. A method is a declaration, not a class hierarchy.

A :class:`Method` names what to cut (a criterion), when to cut (a schedule), how much
each group keeps by default (an allocation) and its typed options. Each lives in one
short file under ``pruners/methods/``, which is imported automatically, so adding a
method needs no edit anywhere else::

    @dataclass
    class Options:
        mask_gradients: bool = False

    register(Method(name="l2", description="...", options=Options,
                    build=lambda o: (L2Norm(), Soft(mask_gradients=o.mask_gradients))))
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .allocation import ALLOCATIONS
from .groups import SCOPES


@dataclass(frozen=True)
class Method:
    """One registered pruning method.

    Attributes:
        name: the name users type (``--method``).
        description: one line for ``--help`` and docs.
        options: the dataclass of the method's typed options (:mod:`.options`).
        build: options -> (criterion, schedule), fresh objects for one pruning run.
        allocation: the default allocation (``uniform``, ``global`` or ``layer_rates``).
        scopes: the scopes the method supports.
        scope_note: why another scope is refused, for the error message.
        label: the name in tables and plots (default: ``name``).
    """

    name: str
    description: str
    options: type
    build: Callable[[Any], tuple[Any, Any]]
    label: str = ""
    allocation: str = "uniform"
    scopes: tuple[str, ...] = SCOPES
    scope_note: str = ""

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", self.name)
        if self.allocation not in ALLOCATIONS or not set(self.scopes) <= set(SCOPES):
            raise ValueError(f"method {self.name!r}: allocation must be one of {ALLOCATIONS}, scopes within {SCOPES}")


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Make ``method`` available by its name; returns it."""
    if not method.name or method.name in _REGISTRY:
        raise ValueError(f"pruning method name {method.name!r} is empty or already registered")
    _REGISTRY[method.name] = method
    return method


def available() -> list[str]:
    """Names of the registered pruning methods."""
    return sorted(_REGISTRY)


def get_method(name: str) -> Method:
    """The registered method called ``name``.

    Raises:
        ValueError: unknown name; the message gives the closest name and every valid one.
    """
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"unknown pruning method {name!r}; {hint}valid names: {', '.join(available())}")
    return _REGISTRY[name]
