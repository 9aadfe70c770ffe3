"""The ``reid-prune`` command's entry point: the CLI, with a Ctrl-C during start-up handled like any other.

Loading torch takes seconds (more on a busy machine). An interrupt in that window would otherwise
end in the interpreter's KeyboardInterrupt traceback; here it exits 130 with one line, as an
interrupt does once :func:`reid_prune.cli.main` runs. Importing this module imports neither torch
nor the CLI (the package's root loads its names lazily).
"""

from __future__ import annotations

import sys
from typing import Sequence

STARTUP_INTERRUPTED = "reid-prune: interrupted while starting; nothing was run or written"


def main(argv: Sequence[str] | None = None) -> int:
    """Import the CLI and run it; 130 when interrupted while importing."""
    try:
        from .cli import main as run
    except KeyboardInterrupt:
        print(STARTUP_INTERRUPTED, file=sys.stderr)
        return 130
    return run(argv)
