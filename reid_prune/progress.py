"""Progress bars that suit where they are written: a tqdm bar on a terminal, whole lines in a log.

tqdm redraws its bar with carriage returns on every update; written to a file or a pipe
(``reid-prune train ... 2> train.log``, a CI log, ``| tee``), each redraw stays, and a log
becomes mostly progress bars. :func:`progress_bar` is the one factory every loop of the
package uses: on a terminal it returns a :class:`tqdm.tqdm`; otherwise a :class:`LineProgress`,
which prints one line every :data:`INTERVAL_S` seconds while the loop runs and, where the
caller asks (``final_line``, e.g. one per training epoch), one when it ends::

    for batch in progress_bar(loader, desc="features", disable=not progress, leave=False):
        ...
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TextIO

from tqdm import tqdm

INTERVAL_S = 30.0  # seconds between two lines in a log: a sign of life, not a flood


def is_terminal(stream: Any) -> bool:
    """Whether ``stream`` is an open terminal (False for files, pipes, closed or odd streams)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed file
        return False


def progress_bar(iterable: Iterable | None = None, *, desc: str = "", total: int | None = None,
                 disable: bool = False, leave: bool = True, final_line: bool | None = None,
                 interval: float = INTERVAL_S, stream: TextIO | None = None, **tqdm_options: Any) -> Any:
    """A progress bar over ``iterable`` (or updated by hand with ``total``), drawn to suit ``stream``.

    Args:
        iterable, desc, total, disable, leave: as :class:`tqdm.tqdm` takes them.
        final_line: when ``stream`` is not a terminal, print a summary line when the bar closes
            (default: ``leave``; a bar that ran long enough to print a line always ends with one).
        interval: seconds between two lines when ``stream`` is not a terminal.
        stream: where the bar is written (default: ``sys.stderr`` at the time of the call).
        **tqdm_options: passed to tqdm on a terminal (``dynamic_ncols``, ...); unused in a log.

    Returns:
        A :class:`tqdm.tqdm` when ``stream`` is a terminal or the bar is disabled, else a
        :class:`LineProgress`; both iterate, ``update``, ``set_postfix`` and ``close``.
    """
    stream = sys.stderr if stream is None else stream
    if disable or is_terminal(stream):
        return tqdm(iterable, desc=desc, total=total, disable=disable, leave=leave, file=stream, **tqdm_options)
    return LineProgress(iterable, desc=desc, total=total, final_line=leave if final_line is None else final_line,
                        interval=interval, stream=stream)


class LineProgress:
    """A progress bar for logs: a line every ``interval`` seconds, and one at the end when asked or after one.

    A line reads ``epoch 3/30: 120/480 (25%), 31 s, loss=0.412, lr=1.00e-03``; the last
    ``epoch 3/30: 480/480 (100%) done in 2 min 4 s, loss=0.398, lr=1.00e-03``.
    """

    def __init__(self, iterable: Iterable | None = None, *, desc: str = "", total: int | None = None,
                 final_line: bool = False, interval: float = INTERVAL_S, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.desc, self.total = iterable, desc, total
        self.final_line, self.interval = final_line, interval
        self.stream = sys.stderr if stream is None else stream
        self.clock = clock
        self.n, self.postfix, self.lines, self.closed = 0, "", 0, False
        self.started = self.last = clock()

    def __len__(self) -> int:
        return self.total or 0

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("this progress bar has no iterable: call update() instead")
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        """Count ``n`` more items; print a line when ``interval`` seconds passed since the last one."""
        self.n += n
        now = self.clock()
        if now - self.last >= self.interval:
            self.last = now
            self._write(now, done=False)

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **values: Any) -> None:
        """Values shown after the count (the next line shows them), as tqdm's ``set_postfix``."""
        values = {**(ordered_dict or {}), **values}
        self.postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def close(self) -> None:
        """End the bar: its summary line if ``final_line``, or if it printed any line before (its series ends)."""
        if self.closed:
            return
        self.closed = True
        if self.final_line or self.lines:
            self._write(self.clock(), done=True)

    def _write(self, now: float, *, done: bool) -> None:
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        if self.total:
            count += f" ({100 * self.n / self.total:.0f}%)"
        elapsed = duration(now - self.started)
        line = f"{self.desc + ': ' if self.desc else ''}{count}{' done in ' if done else ', '}{elapsed}"
        self.stream.write(line + (f", {self.postfix}" if self.postfix else "") + "\n")
        self.stream.flush()
        self.lines += 1


def duration(seconds: float) -> str:
    """``4.2 s``, ``31 s``, ``2 min 4 s``, ``1 h 3 min``: as precise as a log reader needs."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = int(round(seconds))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"
