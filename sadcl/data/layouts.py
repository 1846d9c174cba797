"""The paper's five datasets read in the layouts their users have on disk, checked before any work.

``check_layout(name, root)`` validates a dataset (``coco2014``, ``voc2007``, ``voc2012``, ``nuswide``,
``vg500``; where each file lies: :mod:`sadcl.data.layout_files` and REFERENCE.md section e) and reports
images, labels and problems per split; ``load_split(name, root, split)`` returns the split as a
:class:`~sadcl.data.datasets.MultiLabelDataset` (``DataSpec(format=name, path=root, split=...)`` in training).

Rules:
  * the data root is the folder holding the dataset's files, or a folder holding it under its usual name
    (``COCO2014/``, ``VOCdevkit/``, ``VOC2007/VOCdevkit/``, ``nuswide/``, ``VG/``);
  * every missing folder or file of the dataset is named, all in one error line, with the path expected;
  * images listed but absent on disk: without ``skip_bad`` any such image is an error (training would stop at
    it), naming how many, the list and one of them; with ``skip_bad`` they are dropped and reported, unless
    more than half of a split is missing (a wrong folder or an unfinished download: still an error);
  * ``verify_images=True`` also decodes every present image (as training loads it, in threads); unreadable
    ones follow the same rule as missing ones;
  * what ``skip_bad`` drops is decided once: :attr:`SplitReport.dropped` names the images (relative to their
    image folder), and ``load_split(..., dropped=...)`` (or a :func:`decided` block around code that builds
    the datasets) reuses that decision instead of decoding every image again; ``check_layout(...,
    known_bad=...)`` takes a recorded decision in place of decoding;
  * image files in an image folder that no list names are counted (information only);
  * NUS-WIDE images without any label are dropped (the authors' choice); elsewhere they stay as all-negative
    rows (COCO keeps its 702 unannotated train images, as the authors do). Both are counted in ``empty``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Collection, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .._text import printable
from .datasets import MultiLabelDataset, missing_files
from .images import IMAGE_SUFFIXES, check_image
from .layout_files import LAYOUTS, SPLITS, Layout, LayoutError, Listing, layout_for

__all__ = [
    "LAYOUTS",
    "SPLITS",
    "LayoutError",
    "LayoutReport",
    "SplitReport",
    "StaleDecisionError",
    "check_layout",
    "decided",
    "load_split",
]

MISSING_LIMIT = 0.5  # with skip_bad: more than this share of a split missing means the wrong folder


class StaleDecisionError(LayoutError):
    """A recorded decision of images to drop names an image its split does not list: it was made on other data.
    ``problem``: the message without its advice (a caller that holds the record words its own)."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"{problem}; decide again without it")
        self.problem = problem


@dataclass
class SplitReport:
    """What one split holds: ``images`` the loader will use, ``labels`` (classes), ``positives`` (1s in their
    targets), ``empty`` (images without a label), ``unreadable``/``missing`` (listed images that cannot be
    used: dropped with ``skip_bad``, not counted in ``images``), ``unlisted`` (image files in the folder that
    no list names), one sample problem; ``dropped``: the missing and unreadable ones, relative to
    ``image_dir``, sorted (what ``load_split(..., dropped=...)`` takes); ``recorded``: the unreadable ones
    come from ``known_bad``, not from decoding."""

    name: str
    images: int
    labels: int
    positives: int
    empty: int
    unreadable: int
    unlisted: int
    missing: int
    sample_problem: str | None
    empty_dropped: bool = False
    list_file: str = ""
    image_dir: str = ""
    verified: bool = False
    dropped: list[str] = field(default_factory=list)
    recorded: bool = False


@dataclass
class LayoutReport:
    """The result of :func:`check_layout`: the dataset, its data root and a :class:`SplitReport` per split."""

    dataset: str
    root: str
    splits: dict[str, SplitReport]

    def lines(self) -> list[str]:
        """A human summary, one line per fact."""
        out = [f"{self.dataset} data at {printable(self.root)}"]
        for s in self.splits.values():
            empty = ""
            if s.empty:
                kept = "dropped, as the authors do" if s.empty_dropped else "kept as all-negative rows"
                empty = f"; {s.empty:,} without any label ({kept})"
            out.append(
                f"  {s.name}: {s.images:,} images, {s.labels} labels, {s.positives:,} positive labels{empty} "
                f"(list: {printable(s.list_file)})"
            )
            decoded = (
                f"{s.unreadable:,} unreadable (as recorded)"
                if s.recorded
                else f"{s.unreadable:,} unreadable"
                if s.verified
                else "images not decoded"
            )
            out.append(
                f"  {s.name}: {s.missing:,} listed images missing, {decoded}, "
                f"{s.unlisted:,} image files in {printable(s.image_dir)} named by no list (ignored)"
            )
            if s.sample_problem:
                out.append(f"  {s.name}: e.g. {printable(s.sample_problem)}")
        return out


def _root(name: str, root: str | os.PathLike) -> tuple[Layout, Path]:
    layout = layout_for(name)
    path = Path(os.fspath(root))
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is not a folder"
        raise LayoutError(f"{name} data root {printable(path)} {what}; give the folder that holds {layout.shape}")
    return layout, path


def _require(layout: Layout, root: Path, bases: Mapping[str, Path]) -> None:
    """Raise one :class:`LayoutError` naming every missing folder/file of the splits in ``bases``."""
    missing: list[str] = []
    for split, base in bases.items():
        missing += [m for m in layout.missing(base, split) if m not in missing]
    if missing:
        raise LayoutError(
            f"{layout.name} data at {printable(root)} is incomplete: "
            + "; ".join(f"missing {m}" for m in missing)
            + f"; expected {layout.shape} under the data root; download or extract them there, "
            "or give the folder that holds them"
        )


def _unreadable(paths: list[str]) -> list[tuple[str, str]]:
    """(path, why) of each of ``paths`` that does not load as training loads it (``check_image``: decoded)."""
    workers = max(1, min(8, os.cpu_count() or 1))  # Pillow releases the GIL while decoding
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return [(p, r) for p, r in zip(paths, pool.map(check_image, paths)) if r is not None]


def _namer(folder: Path) -> Callable[[str], str]:
    """A listed path as its name relative to its image ``folder``, with ``/`` (what a decision records)."""
    prefix = os.path.join(str(folder), "")

    def name(path: str) -> str:
        rel = path[len(prefix) :] if path.startswith(prefix) else os.path.relpath(path, folder)
        return rel.replace(os.sep, "/")

    return name


def _split_off(name: str, split: str, li: Listing, dropped: Collection[str]) -> list[bool]:
    """Which of ``li.paths`` to keep when the names in ``dropped`` (relative to the image folder) are dropped;
    a name the split does not list means the decision was made on other data. Names are only compared with
    the listed ones, never opened."""
    rel = _namer(li.image_dir)
    names = [rel(p) for p in li.paths]
    unknown = set(dropped).difference(names)
    if unknown:
        raise StaleDecisionError(
            f"{printable(min(unknown))!r}, recorded as an image to drop from the {name} {split} split, is not "
            f"listed in {printable(li.list_file)}: the record was made on other data"
        )
    drop = set(dropped)
    return [n not in drop for n in names]


def _unlisted(listings: Mapping[str, Listing]) -> dict[str, int]:
    """Per split: image files in its image folder named by none of the lists reading that folder."""
    by_dir: dict[str, set[str]] = {}
    for li in listings.values():
        by_dir.setdefault(str(li.image_dir), set()).update(li.paths, li.dropped)
    counts = {}
    for folder, listed in by_dir.items():
        counts[folder] = sum(
            1
            for top, _, files in os.walk(folder)
            for f in files
            if os.path.splitext(f)[1].lower() in IMAGE_SUFFIXES and os.path.join(top, f) not in listed
        )
    return {split: counts[str(li.image_dir)] for split, li in listings.items()}


def _check_bad(name: str, split: str, li: Listing, bad: list[str], why: str, skip_bad: bool) -> None:
    """The missing-image rule (module docstring): raise when ``bad`` images make the split unusable."""
    n = len(li.paths)
    if not n:
        raise LayoutError(f"{printable(li.list_file)} lists no {name} {split} image with a label; check that file")
    if not bad or (skip_bad and len(bad) <= MISSING_LIMIT * n):
        return
    head = f"{len(bad):,} of the {n:,} {name} {split} images listed in {printable(li.list_file)} are {why}"
    where = f"(e.g. {printable(bad[0])})"
    if skip_bad:
        raise LayoutError(
            f"{head} {where}: more than half, so {printable(li.image_dir)} is probably the wrong folder or "
            "an unfinished download; complete it or give the right data root"
        )
    raise LayoutError(f"{head} {where}; restore them, or drop them with skip_bad=True")


def _sample(missing: list[str], unreadable: list[tuple[str, str]]) -> str | None:
    if missing:
        return f"missing: {missing[0]}"
    if unreadable:
        return f"unreadable: {unreadable[0][0]} ({unreadable[0][1]})"
    return None


def check_layout(
    name: str,
    root: str | os.PathLike,
    *,
    verify_images: bool = False,
    skip_bad: bool = False,
    known_bad: Mapping[str, Collection[str]] | None = None,
) -> LayoutReport:
    """Validate dataset ``name`` under ``root`` and report each split (``train``, ``val``).

    Raises :class:`LayoutError` (one line) when the data cannot be used: every missing folder/file named at
    once, a malformed list or label file named with its line, or missing/unreadable images (see the module
    docstring for when ``skip_bad`` lets those through). ``known_bad`` (split -> names relative to the image
    folder, a :attr:`SplitReport.dropped` recorded earlier) stands for the unreadable images instead of
    decoding them (``verify_images`` is then not needed).
    """
    layout, path = _root(name, root)
    bases = {split: layout.base(path, split) for split in SPLITS}
    _require(layout, path, bases)
    listings = {split: layout.read(bases[split], split) for split in SPLITS}
    unlisted = _unlisted(listings)
    splits = {}
    for split, li in listings.items():
        missing = missing_files(li.paths)
        _check_bad(name, split, li, missing, "missing", skip_bad)
        absent = set(missing)
        unreadable: list[tuple[str, str]] = []
        if known_bad is not None:
            keep = _split_off(name, split, li, known_bad.get(split, ()))
            unreadable = [(p, "recorded") for p, k in zip(li.paths, keep) if not k and p not in absent]
        elif verify_images:
            unreadable = _unreadable([p for p in li.paths if p not in absent])
        if unreadable:
            _check_bad(name, split, li, [p for p, _ in unreadable], "unreadable", skip_bad)
        bad = absent.union(p for p, _ in unreadable)  # dropped by the loader (skip_bad)
        used = [p not in bad for p in li.paths] if bad else slice(None)
        splits[split] = SplitReport(
            name=split,
            images=len(li.paths) - len(bad),
            labels=len(li.label_names),
            positives=int(li.targets[used].sum()),
            empty=li.empty,
            unreadable=len(unreadable),
            unlisted=unlisted[split],
            missing=len(missing),
            sample_problem=_sample(missing, unreadable),
            empty_dropped=li.empty_dropped,
            list_file=str(li.list_file),
            image_dir=str(li.image_dir),
            verified=verify_images or known_bad is not None,
            dropped=sorted(map(_namer(li.image_dir), bad)),
            recorded=known_bad is not None,
        )
    return LayoutReport(name, str(path), splits)


# (data set, real data root, split) -> names to drop, while a decided() block runs
_DECIDED: dict[tuple[str, str, str], frozenset[str]] = {}


@contextmanager
def decided(name: str, root: str | os.PathLike, dropped: Mapping[str, Collection[str]]) -> Iterator[None]:
    """Within the block, ``load_split(name, root, split, skip_bad=True)`` drops exactly ``dropped[split]``
    (names relative to the image folder, e.g. :attr:`SplitReport.dropped`) instead of decoding every image to
    decide: for code that builds the datasets knowing only ``skip_bad`` (a :class:`~sadcl.train.Trainer` from
    a ``DataSpec``), in a run that decided once (``sadcl reproduce``)."""
    real = os.path.realpath(os.fspath(root))
    entries = {(name, real, split): frozenset(names) for split, names in dropped.items()}
    before = {key: _DECIDED.get(key) for key in entries}
    _DECIDED.update(entries)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                _DECIDED.pop(key, None)
            else:
                _DECIDED[key] = value


def load_split(
    name: str,
    root: str | os.PathLike,
    split: str,
    transform: Callable[[Image.Image], Any] | None = None,
    skip_bad: bool = False,
    dropped: Collection[str] | None = None,
) -> MultiLabelDataset:
    """Split ``split`` (``"train"`` or ``"val"``) of dataset ``name`` under ``root``, checked as
    :func:`check_layout` checks it (without decoding); ``skip_bad`` drops missing and unreadable images (decoding
    every image to find them, unless a :func:`decided` block holds the decision). ``dropped``: the images to
    drop, decided before (:attr:`SplitReport.dropped`), so nothing is decoded; any other listed image missing
    is then an error (it was there when the decision was made)."""
    if split not in SPLITS:
        raise LayoutError(f"split of the {name} data must be 'train' or 'val', got {printable(split)!r}")
    layout, path = _root(name, root)
    base = layout.base(path, split)
    _require(layout, path, {split: base})
    li = layout.read(base, split)
    if dropped is None and skip_bad:
        dropped = _DECIDED.get((name, os.path.realpath(path), split))
    if dropped is not None:
        return _decided_split(name, split, li, dropped, transform)
    _check_bad(name, split, li, missing_files(li.paths), "missing", skip_bad)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one message per problem: the dataset's own "skipped" warning below
        dataset = MultiLabelDataset(li.paths, li.targets, li.label_names, transform, skip_bad=skip_bad)
    _warn_dropped(name, split, li, dataset.skipped)
    return dataset


def _warn_dropped(name: str, split: str, li: Listing, skipped: list[str], stacklevel: int = 3) -> None:
    if skipped:
        warnings.warn(
            f"{name} {split}: dropped {len(skipped):,} missing or unreadable image(s) listed in "
            f"{printable(li.list_file)}, e.g. {printable(skipped[0])}",
            stacklevel=stacklevel,  # the caller of load_split
        )


def _decided_split(
    name: str, split: str, li: Listing, dropped: Collection[str], transform: Callable[[Image.Image], Any] | None
) -> MultiLabelDataset:
    """The split without the images of a decision made before: the kept ones in list order, as
    ``MultiLabelDataset(skip_bad=True)`` keeps them, with nothing decoded."""
    keep = _split_off(name, split, li, dropped)
    paths = [p for p, k in zip(li.paths, keep) if k]
    gone = missing_files(paths)
    if gone:
        raise LayoutError(
            f"{len(gone):,} of the {name} {split} images listed in {printable(li.list_file)} are missing (e.g. "
            f"{printable(gone[0])}) but were there when the {len(dropped):,} images to drop were decided; "
            "restore them, or decide again"
        )
    dataset = MultiLabelDataset(paths, li.targets[np.asarray(keep, dtype=bool)], li.label_names, transform)
    dataset.skipped = [p for p, k in zip(li.paths, keep) if not k]
    _warn_dropped(name, split, li, dataset.skipped, stacklevel=4)
    return dataset
