"""The images a tagging job reads, streamed: files and URLs as given, folders walked in a fixed order.

Nothing is listed up front: a walk holds one folder's sorted entries per level and the identity of each folder
walked (memory grows with the largest folder, the depth and the number of folders, never with the number of
images), so the job can start scoring at once and a second walk (the progress bar's count, a resumed job) sees
the same order.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from itertools import chain
from typing import BinaryIO

from .._files import not_regular_reason, open_regular
from ..data.images import IMAGE_SUFFIXES

__all__ = ["IMAGE_SUFFIXES", "STDIN", "iter_images", "iter_listed", "check_folders"]

STDIN = "-"  # --files-from -: the list is read from standard input
MAX_LIST_LINE = 65536  # bytes: a path is at most 4,096 on Linux; a longer "line" is not a list of names


def _is_url(item: str) -> bool:
    from ..data.remote import is_url  # light: requests is imported only when a URL is fetched

    return is_url(item)


def _folder_key(path: str) -> tuple[int, int] | None:
    """What identifies a folder whatever the path leading to it (device, inode); None if it cannot be read."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def _walk(folder: str, recursive: bool, seen: set[tuple[int, int]]) -> Iterator[str]:
    """Image files of ``folder`` sorted by name; with ``recursive`` a sub-folder's images come where its name
    sorts. A folder already walked (a symlink back to an ancestor or to a folder seen before) is not walked
    again, so a symlink loop ends and no image is listed twice."""
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as e:
        raise OSError(f"cannot read folder {folder}: {e.strerror or e}") from None
    for entry in entries:
        try:
            is_dir = entry.is_dir()  # follows symlinks; a broken or looping link is not a folder
        except OSError:
            is_dir = False
        if is_dir:
            key = _folder_key(entry.path)
            if recursive and key is not None and key not in seen:
                seen.add(key)
                yield from _walk(entry.path, recursive, seen)
        elif os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES and not_regular_reason(entry.path) is None:
            # regular files only: a FIFO named x.png would block the reader, a looping link fails
            yield entry.path


def _folder(item: str) -> str | None:
    """``item`` as a folder path (normalised like :class:`pathlib.Path`: no trailing slash, no ``./``), or None
    when it is a URL or not a folder."""
    if _is_url(item) or not os.path.isdir(item):
        return None
    from pathlib import Path

    return str(Path(item))


def _entries(fp: BinaryIO, name: str, null: bool) -> Iterator[str]:
    """The names of a list: lines (a CR before the LF dropped, blank lines skipped) or, with ``null``, entries
    ended by NUL bytes (``find -print0``: a name may hold line breaks). Read as the bytes arrive (``read1``:
    a name piped in is yielded without waiting for more), each entry bounded by ``MAX_LIST_LINE``."""
    sep, what = (b"\0", "name") if null else (b"\n", "line")
    rest, n = b"", 0
    while True:
        chunk = fp.read1(MAX_LIST_LINE)
        *entries, rest = (rest + chunk).split(sep)
        if not chunk and rest:  # the last entry, without its separator
            entries, rest = [*entries, rest], b""
        for raw in entries:
            n += 1
            entry = raw if null else raw.rstrip(b"\r")
            if len(entry) > MAX_LIST_LINE:
                break
            if entry if null else entry.strip():
                # bytes as the file system names them: a name that is not UTF-8 still reaches its file
                yield os.fsdecode(entry)
        else:
            if len(rest) <= MAX_LIST_LINE:
                if not chunk:
                    return
                continue
            n += 1
        raise ValueError(
            f"--files-from {name}: {what} {n} is longer than {MAX_LIST_LINE} bytes; give one image path, folder or "
            f"URL per {what}"
        )


def iter_listed(list_file: str, null: bool = False) -> Iterator[str]:
    """``--files-from``: the lines of ``list_file`` (``-``: standard input), one image path, folder or URL per
    line (``null``: per NUL-terminated entry), read as they are needed (a list of millions of names streams in
    flat memory); blank lines are skipped, a relative path is relative to the current folder (as ``tar -T``
    reads it). The list must be a regular file (it is read again by ``--resume`` and by each ``torchrun``
    process) or standard input."""
    if list_file == STDIN:
        yield from _entries(sys.stdin.buffer, "- (standard input)", null)
        return
    with open_regular(list_file, "--files-from list", ValueError) as fp:
        yield from _entries(fp, list_file, null)


def iter_images(
    items: Iterable[str], recursive: bool = False, files_from: str | None = None, null: bool = False
) -> Iterator[str]:
    """Files and URLs as given (the loader refuses special files among them, the fetcher any scheme but
    http(s)); a folder becomes its image files (regular files with an image suffix), sorted by name, and with
    ``recursive`` those of its sub-folders too, depth first. The names listed in ``files_from``
    (:func:`iter_listed`, ``null``: NUL-separated) come after ``items``, read the same way."""
    if files_from is not None:
        items = chain(items, iter_listed(files_from, null))
    for item in items:
        folder = _folder(item)
        if folder is None:
            yield item
            continue
        key = _folder_key(folder)
        yield from _walk(folder, recursive, {key} if key else set())


def check_folders(items: Iterable[str], recursive: bool = False) -> None:
    """Raise ``FileNotFoundError`` naming the first folder among ``items`` that holds no image (the walk stops
    at the first image found, so this costs little before a long job)."""
    for item in items:
        if _folder(item) is not None and next(iter_images([item], recursive), None) is None:
            where = "in folder or its sub-folders" if recursive else "in folder"
            hint = "" if recursive else " (--recursive also reads its sub-folders)"
            raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) {where} {item}{hint}")
