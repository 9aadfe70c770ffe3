"""The optional matplotlib dependency: figures without pyplot's global state, and the install hint.

Figures are :class:`matplotlib.figure.Figure` objects saved with the Agg renderer, so
plotting works without a display and never touches pyplot's current figure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

INSTALL_HINT = "pip install 'reid-prune[plot]'"
DPI = 100  # pixels per inch of every saved figure


def missing_note(what: str) -> str:
    """The message printed when ``what`` cannot be drawn because matplotlib is missing."""
    return f"{what} not written: matplotlib is not installed ({INSTALL_HINT}, or bash scripts/setup.sh plot)"


def new_figure(width: float, height: float) -> Any | None:
    """A constrained-layout Figure of ``width`` x ``height`` inches, or None when matplotlib is missing."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def save_figure(figure: Any, path: str | Path) -> Path:
    """Save ``figure`` as a PNG of exactly its size in inches times :data:`DPI` pixels."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI, format="png")
    return path
