"""Atomic file writes: a crash never leaves a half-written checkpoint, cache index or export under its final name."""

from __future__ import annotations

import errno
import os
import re
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

_TMP_HEX = 12  # hex digits of the random part of a temporary name: ``.NAME.<hex>.tmp``


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None], *, durable: bool = True) -> Path:
    """Call ``write(f)`` on a temporary sibling of ``path``, then rename it onto ``path``.

    The temporary name is unique and in the same folder (so the rename is atomic), and it is not made with
    ``tempfile.mkstemp``, whose owner-only permissions would carry over to the final file. With ``durable``
    the data and the rename are flushed to disk (fsync of the file and of its folder).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:_TMP_HEX]}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable and hasattr(os, "O_DIRECTORY"):  # POSIX: make the rename itself durable
        fd = os.open(path.parent, os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, *, durable: bool = True) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")), durable=durable)


def remove_stale_temporaries(folder: str | os.PathLike, names: Iterable[str]) -> list[Path]:
    """Delete the temporary files :func:`atomic_write` left in ``folder`` for the files ``names`` when a
    process was killed mid-write (``.NAME.<hex>.tmp``, nothing else); returns what was removed."""
    pattern = re.compile(rf"\.({'|'.join(re.escape(n) for n in names)})\.[0-9a-f]{{{_TMP_HEX}}}\.tmp")
    removed = []
    for entry in Path(folder).iterdir() if Path(folder).is_dir() else ():
        if pattern.fullmatch(entry.name) and entry.is_file() and not entry.is_symlink():
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def append_line(path: str | os.PathLike, line: str | bytes) -> None:
    """Append ``line`` (one record or several, ending in a newline; text is written as UTF-8) to ``path`` whole
    or not at all.

    A failed write (e.g. a full disk) truncates the file back to its previous size, so a reader never sees
    a torn record, and raises ``OSError`` naming the file. (Only a process killed inside the write can leave
    a partial last line; :func:`drop_partial_last_line` removes it before the next writer appends.)
    """
    data = line.encode("utf-8") if isinstance(line, str) else line
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        start = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:  # os.write may write fewer bytes than asked
                view = view[os.write(fd, view) :]
        except OSError as e:
            os.ftruncate(fd, start)
            reason = e.strerror or os.strerror(e.errno or errno.EIO)
            error = OSError(f"could not append to {path}: {reason}; its earlier records are intact")
            error.errno = e.errno
            raise error from e
    finally:
        os.close(fd)


def drop_partial_last_line(path: str | os.PathLike) -> bool:
    """Truncate ``path`` after its last newline when it ends inside a line (a writer killed mid-record),
    so the next appended record starts on a line of its own; returns whether anything was cut."""
    try:
        f = open(path, "r+b")
    except FileNotFoundError:
        return False
    with f:
        end = f.seek(0, os.SEEK_END)
        pos = end
        while pos > 0:
            step = min(pos, 1 << 16)
            f.seek(pos - step)
            chunk = f.read(step)
            if pos == end and chunk.endswith(b"\n"):
                return False
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                f.truncate(pos - step + newline + 1)
                return True
            pos -= step
        if end:
            f.truncate(0)
        return end > 0
