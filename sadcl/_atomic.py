"""Atomic file writes: a crash never leaves a half-written checkpoint, cache index or export under its final name."""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import BinaryIO, Callable


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None], *, durable: bool = True) -> Path:
    """Call ``write(f)`` on a temporary sibling of ``path``, then rename it onto ``path``.

    The temporary name is unique and in the same folder (so the rename is atomic), and it is not made with
    ``tempfile.mkstemp``, whose owner-only permissions would carry over to the final file. With ``durable``
    the data and the rename are flushed to disk (fsync of the file and of its folder).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
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
