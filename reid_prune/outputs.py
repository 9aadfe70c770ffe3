"""Checks that an output path can be written, made by every command before any work starts.

A run folder, a ``--json`` report or an export file that cannot be written should stop a
command in its first second, not after hours of training. The checks leave nothing behind:
a refused command leaves no files. Writability is tried, not asked: ``os.access`` says yes
to root everywhere, even on read-only or virtual file systems (``/sys``, ``/proc``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


class OutputPathError(ValueError):
    """An output path cannot be written; the message names the path and the reason."""


def _writable_folder(path: Path, option: str) -> Path:
    """The folder in which ``path`` would be created (its nearest existing ancestor), checked to be writable."""
    folder = path
    while not folder.exists():
        if folder.parent == folder:
            break
        folder = folder.parent
    if not folder.is_dir():
        raise OutputPathError(f"{option} '{path}': '{folder}' is a file, so nothing can be created under it; "
                              "choose another path")
    try:
        with tempfile.TemporaryFile(dir=folder):  # created and removed at once
            pass
    except OSError as exc:
        raise OutputPathError(f"{option} '{path}': cannot write in '{folder}' ({exc.strerror or exc}); "
                              "choose another path") from None
    return folder


def check_output_dir(path: str | os.PathLike, option: str = "--output") -> Path:
    """Check that ``path`` is a writable folder, or can be created as one.

    Args:
        path: the output folder.
        option: how the user gave it (a flag or config key), for the message.

    Raises:
        OutputPathError: ``path`` is a file, lies under a file, or is in a folder without write permission.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{option} '{path}': a file of that name exists, but a folder is needed; "
                              "choose another path")
    _writable_folder(path, option)
    return path


def check_output_file(path: str | os.PathLike, option: str = "--output",
                      inputs: Sequence[str | os.PathLike] = ()) -> Path:
    """Check that ``path`` can be written as a file (an existing file is replaced), and is none of ``inputs``.

    Raises:
        OutputPathError: ``path`` is a folder, one of the command's input files (writing it would destroy
            it), lies under a file, or is in a folder without write permission.
    """
    path = Path(path)
    for source in inputs:
        if Path(source).exists() and path.exists() and path.resolve() == Path(source).resolve():
            raise OutputPathError(f"{option} '{path}': is the input file itself, which writing would destroy; "
                                  "choose another path")
    if path.is_dir():
        raise OutputPathError(f"{option} '{path}': is a folder; give the name of a file to write")
    _writable_folder(path.parent if path.exists() else path, option)
    return path


def interrupt_behind(exc: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt that ``exc`` is, or that it was raised while handling (its cause or context), else None.

    Writers in C++ turn a Ctrl-C that reached them through a Python callback into another error: torch.save
    to an open file raises ``RuntimeError: [enforce fail at inline_container.cc] unexpected pos`` while
    handling the KeyboardInterrupt.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed over ``path`` if the body succeeds, removed otherwise.

    A Ctrl-C during the body leaves ``path`` as it was and raises KeyboardInterrupt, even when the writer
    turned it into another error (:func:`interrupt_behind`), so commands report it as an interrupt.

    Raises:
        OutputPathError: ``path`` is a folder, or no file can be created beside it.
    """
    path = Path(path)
    if path.is_dir():  # checked first: the rename would fail after the write, naming only the temporary file
        raise OutputPathError(f"'{path}' is a folder; give the name of a file to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # its message names the temporary file, which the caller never wrote
        raise OutputPathError(f"cannot write '{path}' ({exc.strerror or exc}); choose a folder you can write "
                              "in") from None
    os.close(fd)
    try:
        try:
            yield Path(tmp)
        except Exception as exc:
            interrupt = interrupt_behind(exc)
            if interrupt is not None:
                raise interrupt from None
            raise
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())  # the data is on disk before the rename makes it visible
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
