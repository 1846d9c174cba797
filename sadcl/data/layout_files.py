"""Where the files of each of the paper's five datasets lie, and how they are read.

One reader per dataset, each in the layout its users already have on disk (the authors' loaders,
``lib_sadcl/dataset``): which folder under the data root holds the dataset, which folders and files a split
needs, and the split's images and 0/1 targets as its files list them. :mod:`sadcl.data.layouts` builds the
checks and the datasets on top. Every problem is a :class:`LayoutError` of one line naming the file (and
line) and saying what to do; names read from files never leave their image folder.
"""

from __future__ import annotations

import json
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

from .._text import printable
from .datasets import CocoDataset, VOCDataset
from .labels import read_labels

__all__ = ["LAYOUTS", "SPLITS", "LayoutError", "Listing", "Layout", "layout_for", "relative_name"]

LAYOUTS: tuple[str, ...] = ("coco2014", "voc2007", "voc2012", "nuswide", "vg500")
SPLITS: tuple[str, ...] = ("train", "val")
_FAST_READ_LIMIT = 256 << 20  # label tables up to this size are read at once (NUS-WIDE's largest: ~26 MB)


class LayoutError(ValueError):
    """A dataset's files are missing, incomplete or malformed; the message names the path it expected (or the
    file and line) and says what to do."""


@dataclass
class Listing:
    """One split as its files list it: ``paths[i]`` has the 0/1 ``targets[i]`` (float32 ``[N, C]``)."""

    paths: list[str]
    targets: np.ndarray
    label_names: tuple[str, ...]
    list_file: Path  # the file that names the images (for messages)
    image_dir: Path
    empty: int  # images without any label (dropped for NUS-WIDE, all-negative rows otherwise)
    empty_dropped: bool = False
    dropped: list[str] = field(default_factory=list)  # listed but not used (NUS-WIDE images without a label)


def _p(path: object) -> str:
    return printable(os.fspath(path)) if isinstance(path, os.PathLike) else printable(path)


def relative_name(name: str, where: str) -> str:
    """``name`` (from a list or annotation file) as a path relative to its image folder: never absolute,
    never with ``..``, so a file cannot make sadcl read outside the dataset. (Plain string tests: this runs
    once per image of lists of 160,000.)"""
    clean = name.strip().replace("\\", "/")
    if not clean or clean.startswith("/") or clean[1:2] == ":" or ".." in clean.split("/"):
        raise LayoutError(
            f"{where}: image name {printable(name)!r} is not a path inside the image folder; fix that entry"
        )
    return clean


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, stripped line) of the non-blank lines of a text file, streamed."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, start=1):
                line = line.strip()
                if line:
                    yield number, line
    except OSError as e:
        raise LayoutError(f"cannot read {_p(path)}: {e.strerror or e}") from None


def _first_with(candidates: Sequence[Path], markers: Sequence[str]) -> Path:
    """The first candidate folder holding any of ``markers`` (else the first: errors name paths under it)."""
    for folder in candidates:
        if any((folder / m).exists() for m in markers):
            return folder
    return candidates[0]


def _need(path: Path, what: str, folder: bool = False) -> list[str]:
    """``["PATH (what)"]`` when ``path`` is not the folder/file expected, else ``[]``."""
    if path.is_dir() if folder else path.is_file():
        return []
    kind = "" if not path.exists() else "; it is not a folder" if folder else "; it is not a regular file"
    return [f"{_p(path)}{os.sep if folder else ''} ({what}{kind})"]  # a FIFO is never opened


def _wrap(path: Path, error: Exception) -> LayoutError:
    text = str(error)
    return LayoutError(text if str(path) in text else f"{_p(path)}: {text}")


class Layout(ABC):
    """How one dataset lies on disk (subclasses: one per dataset)."""

    name: str
    labels: str  # the packaged label set
    shape: str  # the layout, for messages
    also: tuple[str, ...] = ()  # sub-folders of the data root also searched for the dataset
    markers: tuple[str, ...] = ()  # entries that say a folder holds the dataset

    def label_names(self) -> tuple[str, ...]:
        return read_labels(self.labels)

    def base(self, root: Path, split: str) -> Path:
        """The folder holding ``split``'s files (the data root or a known sub-folder of it)."""
        return _first_with([root, *(root / a for a in self.also)], self.markers)

    @abstractmethod
    def missing(self, base: Path, split: str) -> list[str]:
        """``"PATH (what)"`` for every folder or file of ``split`` that is not there."""

    @abstractmethod
    def read(self, base: Path, split: str) -> Listing:
        """``split`` as its files list it (call after :meth:`missing` found nothing missing)."""


class Coco2014(Layout):
    name, labels, also = "coco2014", "coco80", ("COCO2014", "coco2014")
    markers = ("annotations", "train2014", "val2014")
    shape = "train2014/, val2014/, annotations/instances_{train,val}2014.json"

    @staticmethod
    def _files(base: Path, split: str) -> tuple[Path, Path]:
        part = f"{split}2014"
        return base / part, base / "annotations" / f"instances_{part}.json"

    def missing(self, base: Path, split: str) -> list[str]:
        images, annotations = self._files(base, split)
        return _need(images, f"COCO {split} images", folder=True) + _need(annotations, f"COCO {split} annotations")

    def read(self, base: Path, split: str) -> Listing:
        images, annotations = self._files(base, split)
        try:
            ds = CocoDataset(annotations, images)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise _wrap(annotations, e) from None
        names = self.label_names()
        if tuple(ds.label_names) != names:
            got = list(ds.label_names)
            at = next((i for i, (a, b) in enumerate(zip(got, names)) if a != b), min(len(got), len(names)))
            found = printable(got[at]) if at < len(got) else "nothing"
            raise LayoutError(
                f"{_p(annotations)}: its {len(got)} categories are not COCO 2014's 80 in category-id order (label "
                f"{at} is {found!r}, expected {names[at] if at < len(names) else 'nothing'!r}); use the "
                "instances_*2014.json files of the COCO 2014 release"
            )
        prefix = os.path.join(str(images), "")
        for path in ds.paths:  # file_name entries must stay inside the image folder
            inside = path[len(prefix) :] if path.startswith(prefix) else path
            relative_name(inside, f"{_p(annotations)} image {printable(path)!r}")
        targets = ds.targets.numpy()
        return Listing(ds.paths, targets, names, annotations, images, empty=int((targets.sum(1) == 0).sum()))


class Voc(Layout):
    """VOC ``year_train`` trainval for training, VOC ``year_val`` test for validation (VOC 2012 as the authors)."""

    labels = "voc20"
    markers = ("ImageSets", "Annotations", "JPEGImages")

    def __init__(self, name: str, year_train: str, year_val: str) -> None:
        self.name, self.years = name, {"train": year_train, "val": year_val}
        need = sorted({f"VOCdevkit/VOC{y}" for y in self.years.values()})
        self.shape = " and ".join(f"{n}/{{JPEGImages, Annotations, ImageSets/Main}}" for n in need)

    def base(self, root: Path, split: str) -> Path:
        voc = f"VOC{self.years[split]}"
        candidates = [root / "VOCdevkit" / voc, root / voc / "VOCdevkit" / voc, root / voc, root]
        return next((c for c in candidates if (c / "ImageSets").is_dir()), candidates[0])

    def _list(self, base: Path, split: str) -> Path:
        return base / "ImageSets" / "Main" / ("trainval.txt" if split == "train" else "test.txt")

    def missing(self, base: Path, split: str) -> list[str]:
        what = f"VOC{self.years[split]} {'trainval' if split == 'train' else 'test'}"
        return (
            _need(base / "JPEGImages", f"{what} images", folder=True)
            + _need(base / "Annotations", f"{what} annotations", folder=True)
            + _need(self._list(base, split), f"{what} image list")
        )

    def read(self, base: Path, split: str) -> Listing:
        list_file = self._list(base, split)
        ids = [relative_name(line.split()[0], f"{_p(list_file)}:{n}") for n, line in _lines(list_file)]
        absent = [f for f in (base / "Annotations" / f"{i}.xml" for i in ids) if not f.is_file()]
        if absent:
            raise LayoutError(
                f"{len(absent)} of the {len(ids)} annotation files of the images listed in {_p(list_file)} are "
                f"missing, e.g. {_p(absent[0])}; restore the VOC{self.years[split]} Annotations/ folder"
            )
        try:
            ds = VOCDataset(base, split=list_file.stem, year=self.years[split])
        except (OSError, ValueError) as e:
            raise _wrap(list_file, e) from None
        targets = ds.targets.numpy()
        empty = int((targets.sum(1) == 0).sum())
        return Listing(ds.paths, targets, self.label_names(), list_file, base / "JPEGImages", empty=empty)


class NusWide(Layout):
    name, labels, also = "nuswide", "nuswide81", ("nuswide", "NUS-WIDE")
    markers = ("ImageList", "Groundtruth", "Flickr")
    shape = (
        "Flickr/, ImageList/{Train,Test}Imagelist.txt, Groundtruth/Labels_{Train,Test}.txt "
        "(or Groundtruth/TrainTestLabels/Labels_<concept>_{Train,Test}.txt)"
    )

    @staticmethod
    def _word(split: str) -> str:
        return "Train" if split == "train" else "Test"

    def _per_concept(self, base: Path, split: str) -> list[Path]:
        folder = base / "Groundtruth" / "TrainTestLabels"
        return [folder / f"Labels_{c}_{self._word(split)}.txt" for c in self.label_names()]

    def missing(self, base: Path, split: str) -> list[str]:
        word = self._word(split)
        out = _need(base / "Flickr", "NUS-WIDE images", folder=True)
        out += _need(base / "ImageList" / f"{word}Imagelist.txt", f"NUS-WIDE {word} image list")
        combined = base / "Groundtruth" / f"Labels_{word}.txt"
        if combined.is_file():
            return out
        if (base / "Groundtruth" / "TrainTestLabels").is_dir():
            absent = [f for f in self._per_concept(base, split) if not f.is_file()]
            if absent:
                out.append(
                    f"{_p(absent[0])} ({len(absent)} of the 81 per-concept {word} label files are missing; "
                    f"or give the combined {_p(combined)})"
                )
            return out
        per_concept = f"{_p(base / 'Groundtruth' / 'TrainTestLabels')}{os.sep}"
        return out + _need(
            combined, f"NUS-WIDE {word} labels: 81 space-separated 0/1 per line, or the per-concept {per_concept} files"
        )

    def read(self, base: Path, split: str) -> Listing:
        word = self._word(split)
        list_file = base / "ImageList" / f"{word}Imagelist.txt"
        names = [relative_name(line, f"{_p(list_file)}:{n}") for n, line in _lines(list_file)]
        combined = base / "Groundtruth" / f"Labels_{word}.txt"
        if combined.is_file():
            targets = self._table(combined, 81, list_file, len(names)).astype(np.float32)
        else:
            targets = np.zeros((len(names), 81), dtype=np.float32)
            for c, path in enumerate(self._per_concept(base, split)):
                targets[:, c] = self._table(path, 1, list_file, len(names))[:, 0]
        images = base / "Flickr"
        paths = [os.path.join(images, n) for n in names]
        keep = targets.any(axis=1)  # the authors drop images without any label
        dropped = [p for p, k in zip(paths, keep) if not k]
        return Listing(
            [p for p, k in zip(paths, keep) if k],
            targets[keep],
            self.label_names(),
            list_file,
            images,
            empty=len(dropped),
            empty_dropped=True,
            dropped=dropped,
        )

    def _table(self, path: Path, columns: int, list_file: Path, n: int) -> np.ndarray:
        """The ``[n, columns]`` 0/1 table of ``path``, one row per non-blank line, aligned with ``list_file``."""
        table = _read_01(path, columns)
        if len(table) != n:
            raise LayoutError(
                f"{_p(path)} has {len(table)} label lines but {_p(list_file)} lists {n} images; the two files must "
                "match line for line (use the label and list files of the same NUS-WIDE release)"
            )
        return table


@cache
def _table_pattern(columns: int) -> re.Pattern[str]:
    row = rf"[ \t]*[01](?:[ \t]+[01]){{{columns - 1}}}[ \t]*"
    return re.compile(rf"(?:(?:{row}|[ \t]*)\r?\n)*(?:{row}|[ \t]*)")


def _read_01(path: Path, columns: int) -> np.ndarray:
    """A text file of ``columns`` space-separated 0/1 per line (blank lines skipped) as uint8 ``[rows, columns]``.

    A well-formed file is read at once and checked by one regular expression (NUS-WIDE's 81 label files of
    161,789 lines each are read in seconds); otherwise it is streamed to name the first line at fault."""
    try:
        with open(path, "rb") as f:
            raw = f.read(_FAST_READ_LIMIT + 1)
    except OSError as e:
        raise LayoutError(f"cannot read {_p(path)}: {e.strerror or e}") from None
    if len(raw) <= _FAST_READ_LIMIT:
        text = raw.decode("ascii", errors="replace")
        if _table_pattern(columns).fullmatch(text):
            digits = "".join(text.split()).encode("ascii")
            return (np.frombuffer(digits, dtype=np.uint8) - 48).reshape(-1, columns)
    rows: list[bytes] = []
    for number, line in _lines(path):
        fields = line.split()
        if len(fields) != columns:
            raise LayoutError(f"{_p(path)}:{number}: {len(fields)} columns, expected {columns} (0 or 1 each)")
        digits = "".join(fields)
        if len(digits) != columns or digits.strip("01"):
            raise LayoutError(f"{_p(path)}:{number}: every column must be 0 or 1, got {printable(line[:80])!r}")
        rows.append(digits.encode("ascii"))
    return (np.frombuffer(b"".join(rows), dtype=np.uint8) - 48).reshape(-1, columns)


class VG500(Layout):
    name, labels, also = "vg500", "vg500", ("VG", "vg")
    markers = ("VG_100K", "train_list_500.txt", "vg_category_500_labels_index.json")
    shape = "VG_100K/, train_list_500.txt, test_list_500.txt, vg_category_500_labels_index.json"

    @staticmethod
    def _files(base: Path, split: str) -> tuple[Path, Path]:
        return (
            base / f"{'train' if split == 'train' else 'test'}_list_500.txt",
            base / "vg_category_500_labels_index.json",
        )

    def missing(self, base: Path, split: str) -> list[str]:
        list_file, index_file = self._files(base, split)
        return (
            _need(base / "VG_100K", "Visual Genome images", folder=True)
            + _need(list_file, f"VG-500 {split} image list")
            + _need(index_file, "VG-500 labels: image file name -> label indices 0-499")
        )

    def read(self, base: Path, split: str) -> Listing:
        list_file, index_file = self._files(base, split)
        try:
            with open(index_file, encoding="utf-8") as f:
                index = json.load(f)
        except (OSError, ValueError) as e:
            raise LayoutError(f"{_p(index_file)}: not a readable JSON file ({e})") from None
        if not isinstance(index, dict):
            raise LayoutError(f"{_p(index_file)}: expected a JSON object mapping image file name -> label indices")
        names, rows, cols = [], [], []
        for number, line in _lines(list_file):
            name = relative_name(line, f"{_p(list_file)}:{number}")
            labels = index.get(line)
            if labels is None:
                raise LayoutError(
                    f"{_p(list_file)}:{number}: image {printable(line)!r} has no entry in {_p(index_file)}; "
                    "use the list and label files of the same VG-500 release"
                )
            if not isinstance(labels, list) or any(
                isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 500 for v in labels
            ):
                bad = (
                    labels
                    if not isinstance(labels, list)
                    else next(v for v in labels if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 500)
                )
                raise LayoutError(
                    f"{_p(index_file)}: entry {printable(line)!r} has label {printable(json.dumps(bad))}, but "
                    "VG-500 labels are integer indices 0-499; use the label file of the VG-500 release"
                )
            rows += [len(names)] * len(labels)
            cols += labels
            names.append(name)
        targets = np.zeros((len(names), 500), dtype=np.float32)
        targets[np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)] = 1.0
        images = base / "VG_100K"
        empty = int((targets.sum(1) == 0).sum())
        paths = [os.path.join(images, n) for n in names]
        return Listing(paths, targets, self.label_names(), list_file, images, empty=empty)


_LAYOUTS: dict[str, Layout] = {
    "coco2014": Coco2014(),
    "voc2007": Voc("voc2007", "2007", "2007"),
    "voc2012": Voc("voc2012", "2012", "2007"),
    "nuswide": NusWide(),
    "vg500": VG500(),
}


def layout_for(name: str) -> Layout:
    """The layout of dataset ``name`` (one of :data:`LAYOUTS`)."""
    if name not in _LAYOUTS:
        raise LayoutError(f"unknown dataset layout {printable(name)!r}; known: {', '.join(LAYOUTS)}")
    return _LAYOUTS[name]
