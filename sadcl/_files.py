"""Refuse anything but a regular file before opening it.

Opening a FIFO blocks until a writer appears (forever, if none does), a character device such as
``/dev/zero`` streams without end and a symlink loop fails deep inside a reader with an unhelpful error.
Every reader of untrusted files (images, checkpoints) therefore asks `regular_file` first, which only
``stat``s the path and never opens it.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["not_regular_reason", "open_regular", "regular_file"]

_KINDS: tuple[tuple[Callable[[int], bool], str], ...] = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def not_regular_reason(path: str | os.PathLike[str]) -> str | None:
    """None when ``path`` (symlinks followed) is a regular file, else why not, e.g. ``"file not found"``."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "file not found"
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "it is a symbolic link loop (too many levels of symbolic links)"
        return e.strerror or type(e).__name__  # e.g. "Permission denied" on a parent folder
    except ValueError as e:  # an embedded NUL byte: no file can have that name
        return str(e)
    if stat.S_ISREG(mode):
        return None
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    return f"it is {kind}, not a regular file"


def regular_file(path: str | os.PathLike[str], what: str, error: Callable[[str], Exception] = OSError) -> Path:
    """``path`` as a :class:`~pathlib.Path` when it names a regular file; else raise ``error(message)``.

    The message names ``what`` (``"checkpoint file"``) and the path: ``"checkpoint file not found: x.pth"``
    or ``"checkpoint file x.pth: it is a FIFO (named pipe), not a regular file"``.
    """
    reason = not_regular_reason(path)
    if reason is None:
        return Path(path)
    if reason == "file not found":
        raise error(f"{what} not found: {path}")
    raise error(f"{what} {path}: {reason}")


def open_regular(path: str | os.PathLike[str], what: str, error: Callable[[str], Exception] = OSError) -> BinaryIO:
    """Open a regular file for binary reading, refusing anything else (see :func:`regular_file`).

    The open itself is non-blocking and the opened file is checked again, so a FIFO swapped in after the
    check cannot block either.
    """
    path = regular_file(path, what, error)
    nonblocking = getattr(os, "O_NONBLOCK", 0)  # POSIX; Windows has no FIFOs in the file system
    try:
        fd = os.open(path, os.O_RDONLY | nonblocking | getattr(os, "O_BINARY", 0))
    except OSError as e:
        raise error(f"cannot open {what} {path}: {e.strerror or e}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise error(f"{what} {path}: it is not a regular file")
        if nonblocking:
            os.set_blocking(fd, True)  # a regular file never blocks; readers get ordinary semantics back
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
