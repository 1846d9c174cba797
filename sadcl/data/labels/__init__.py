"""The packaged label sets, one name per line: ``coco80`` (category-id order), ``voc20``, ``nuswide81``
(alphabetical Concepts81), ``vg500`` (by index: the names were never published) and ``fashion10``."""

from __future__ import annotations

from functools import cache
from importlib import resources

__all__ = ["read_labels"]


@cache
def read_labels(name: str) -> tuple[str, ...]:
    """Label names of a packaged label set (``coco80``, ``voc20``, ``nuswide81``, ``vg500``, ``fashion10``)."""
    text = resources.files(__package__).joinpath(f"{name}.txt").read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line)
