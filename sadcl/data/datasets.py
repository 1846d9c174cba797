"""Multi-label datasets: CSV, COCO instances JSON, Pascal VOC, and a folder plus a labels file.

Every dataset yields ``(image [3, H, W] float tensor, target float32 [C])`` with target[c] = 1 when label c
is present, and exposes ``label_names`` (the C names, in target order), ``targets`` (a float32 [N, C]
tensor) and ``paths`` (N image paths). Label mistakes are errors, never silent: an unknown label names its
row, a bad image names its file. With ``skip_bad=True`` every image is decoded once at construction and the
unreadable ones are dropped together with their target rows (``num_skipped``, ``skipped`` record them).
"""

from __future__ import annotations

import csv
import json
import os
import re
import stat
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .images import check_image, load_image
from .labels import read_labels

__all__ = [
    "VOC_CLASSES",
    "MultiLabelDataset",
    "CSVDataset",
    "CocoDataset",
    "VOCDataset",
    "FolderDataset",
    "read_label_names",
    "write_label_names",
    "make_label_names",
    "encode_labels",
    "missing_files",
    "unwrap_worker_errors",
]

PathLike = str | os.PathLike
LabelNames = Sequence[str] | PathLike
Transform = Callable[[Image.Image], torch.Tensor]

VOC_CLASSES: tuple[str, ...] = read_labels("voc20")  # Pascal VOC's standard order

# Separators of the `labels` column of a CSV file: "cat|dog" or "cat;dog".
_LABEL_SPLIT = re.compile(r"[|;]")


# ----------------------------------------------------------------------------- label names


def read_label_names(path: PathLike) -> list[str]:
    """Read a label-name file: plain text, one name per line (blank lines ignored)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label-name file {path} not found (expected one label name per line)")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return _check_names([n for n in names if n], str(path))


def write_label_names(path: PathLike, names: Sequence[str]) -> Path:
    """Write label names one per line (the format `read_label_names` reads)."""
    path = Path(path)
    path.write_text("".join(f"{n}\n" for n in _check_names(list(names), "label names")), encoding="utf-8")
    return path


def make_label_names(label_sets: Iterable[Iterable[str]]) -> list[str]:
    """Label names from data: the sorted union of the labels of every sample."""
    return sorted({label for labels in label_sets for label in labels})


def _check_names(names: list[str], where: str) -> list[str]:
    if not names:
        raise ValueError(f"{where}: no label names")
    seen = set()
    for n in names:
        if not isinstance(n, str) or not n.strip():
            raise ValueError(f"{where}: label names must be non-empty strings, got {n!r}")
        if n in seen:
            raise ValueError(f"{where}: label name {n!r} appears twice")
        seen.add(n)
    return names


def _resolve_names(label_names: LabelNames | None) -> list[str] | None:
    """`label_names` may be a sequence of names or the path of a label-name file."""
    if label_names is None:
        return None
    if isinstance(label_names, (str, os.PathLike)):
        return read_label_names(label_names)
    return _check_names([str(n) for n in label_names], "label_names")


def encode_labels(
    label_sets: Sequence[Sequence[str]], label_names: Sequence[str], where: Sequence[str]
) -> torch.Tensor:
    """Multi-hot float32 [N, C] targets; an unknown label raises an error naming `where[i]` and the label."""
    index = {name: i for i, name in enumerate(label_names)}
    targets = torch.zeros(len(label_sets), len(label_names), dtype=torch.float32)
    for row, labels in enumerate(label_sets):
        for label in labels:
            if label not in index:
                raise ValueError(
                    f"{where[row]}: unknown label {label!r}; it is not among the {len(label_names)} label "
                    f"names (add it to label_names or fix the row)"
                )
            targets[row, index[label]] = 1.0
    return targets


# ----------------------------------------------------------------------------- base class


class MultiLabelDataset(Dataset):
    """Image paths plus a multi-hot target matrix; the base of every dataset here.

    Args:
        paths: N image paths.
        targets: [N, C] 0/1 targets (anything `torch.as_tensor` takes).
        label_names: the C label names in target order.
        transform: PIL RGB image -> tensor; default: `ToTensor` (values in [0, 1]).
        skip_bad: decode every image now and drop the unreadable ones (slow on big sets: one full pass).
    """

    def __init__(
        self,
        paths: Sequence[PathLike],
        targets,
        label_names: Sequence[str],
        transform: Transform | None = None,
        skip_bad: bool = False,
    ) -> None:
        targets = torch.as_tensor(np.asarray(targets, dtype=np.float32))
        paths = [str(p) for p in paths]
        label_names = _check_names(list(label_names), type(self).__name__)
        if targets.ndim != 2 or targets.shape != (len(paths), len(label_names)):
            raise ValueError(
                f"{type(self).__name__}: targets have shape {tuple(targets.shape)}, expected "
                f"[{len(paths)} images, {len(label_names)} labels]"
            )
        self.label_names: list[str] = label_names
        self.transform = transform
        self.skipped: list[str] = []
        # Position of each kept sample in the source listing (lets subclasses keep side data aligned).
        self.source_index: list[int] = list(range(len(paths)))
        if skip_bad:
            keep = self._verify(paths)
            self.skipped = [p for p, ok in zip(paths, keep) if not ok]
            self.source_index = [i for i, ok in enumerate(keep) if ok]
            paths = [paths[i] for i in self.source_index]
            targets = targets[torch.as_tensor(keep, dtype=torch.bool)]
            if self.skipped:
                warnings.warn(
                    f"{type(self).__name__}: skipped {len(self.skipped)} unreadable image(s), e.g. {self.skipped[0]}",
                    stacklevel=3,
                )
        self.paths: list[str] = paths
        self.targets: torch.Tensor = targets.contiguous()

    @staticmethod
    def _verify(paths: Sequence[str]) -> list[bool]:
        # Pillow releases the GIL while decoding, so a few threads make the one-off pass much faster.
        workers = max(1, min(8, os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return [reason is None for reason in pool.map(check_image, paths)]

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = load_image(self.paths[index])  # ImageLoadError names the file
        x = self.transform(img) if self.transform is not None else _to_tensor(img)
        return x, self.targets[index].clone()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} images, {self.num_classes} labels)"


def _to_tensor(img: Image.Image) -> torch.Tensor:
    arr = np.asarray(img, dtype=np.uint8).copy()
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)


def _join(root: Path, name: str) -> Path:
    p = Path(name)
    return p if p.is_absolute() else root / p


def missing_files(paths: Iterable[PathLike]) -> list[str]:
    """The paths that are not regular files (missing, folders, FIFOs, devices, broken links): one ``stat``
    each, nothing opened or decoded, so a whole dataset is checked in seconds before any work starts."""
    missing = []
    for p in paths:
        try:
            ok = stat.S_ISREG(os.stat(p).st_mode)
        except (OSError, ValueError):  # not found, no permission on a folder, symlink loop, NUL in the name
            ok = False
        if not ok:
            missing.append(str(p))
    return missing


_WORKER_ERROR = re.compile(r"Caught (\w+) in DataLoader worker process \d+\.\nOriginal Traceback")


def _worker_original(error: BaseException) -> BaseException | None:
    """The error a DataLoader worker raised, rebuilt with its own one-line message (``None`` when ``error``
    is not a re-raised worker error or the original cannot be recovered)."""
    text = str(error.args[0]) if error.args and isinstance(error.args[0], str) else ""
    found = _WORKER_ERROR.match(text)
    if found is None:
        return None
    kind = type(error)
    if kind.__name__ != found.group(1):  # torch fell back to RuntimeError: the original type is lost
        return None
    module = "" if kind.__module__ in ("builtins", "__main__") else kind.__module__ + "."
    marker = f"\n{module}{kind.__qualname__}: "  # the traceback's last line: "pkg.Type: message"
    at = text.rfind(marker)
    if at < 0:
        return None
    try:
        original = kind(text[at + len(marker) :].rstrip("\n"))
    except Exception:
        return None
    original.worker_traceback = text  # kept for debugging (SADCL_DEBUG shows the unwrapped error only)
    return original


class unwrap_worker_errors:
    """Context manager re-raising an error of a DataLoader worker as the worker raised it: the same type with
    its own one-line message (e.g. :class:`~sadcl.data.images.ImageLoadError` naming the file), instead of
    torch's "Caught … in DataLoader worker process N. Original Traceback …" text of 18 lines."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, error: BaseException | None, tb: object) -> bool:
        del tb  # this frame is part of the new error's traceback: it must not hold the old one's frames
        original = _worker_original(error) if isinstance(error, Exception) else None
        if original is None:
            return False
        # torch's error stays chained (__context__), but without its traceback, whose frames hold the
        # loader's iterator: the worker processes must not live as long as the new error does.
        error.__traceback__ = None
        del error
        raise original from None


# ----------------------------------------------------------------------------- CSV


class CSVDataset(MultiLabelDataset):
    """Images listed in a CSV file with a header.

    Two layouts are read:
      * long: columns ``image`` and ``labels``, labels separated by ``|`` or ``;`` (an empty cell is an image
        with no label); other columns are ignored;
      * wide: column ``image`` and one 0/1 column per label (every other column is a label, or only the
        ``label_names`` columns when given).

    Label names (target order) are ``label_names`` (a list or a label-name file) when given, else the
    header order (wide) or the sorted union of the labels found (long). Relative image paths are resolved
    against ``image_root`` (default: the CSV file's folder).
    """

    def __init__(
        self,
        csv_path: PathLike,
        image_root: PathLike | None = None,
        label_names: LabelNames | None = None,
        transform: Transform | None = None,
        skip_bad: bool = False,
    ) -> None:
        csv_path = Path(csv_path)
        if not csv_path.is_file():
            raise FileNotFoundError(f"CSV file {csv_path} not found")
        root = Path(image_root) if image_root is not None else csv_path.parent
        names = _resolve_names(label_names)
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            if "image" not in header:
                raise ValueError(
                    f"{csv_path}: no 'image' column (found columns {header}); the header must have 'image' "
                    f"and either 'labels' or one 0/1 column per label"
                )
            reader.fieldnames = header
            rows = [(reader.line_num, row) for row in reader]
        where = [f"{csv_path} line {line}" for line, _ in rows]
        images = []
        for (_, row), w in zip(rows, where):
            if None in row:
                raise ValueError(f"{w}: more fields than header columns")
            image = (row.get("image") or "").strip()
            if not image:
                raise ValueError(f"{w}: empty 'image' field")
            images.append(_join(root, image))

        if "labels" in header:
            label_sets = [
                [s.strip() for s in _LABEL_SPLIT.split(row.get("labels") or "") if s.strip()] for _, row in rows
            ]
            names = names if names is not None else make_label_names(label_sets)
            targets = encode_labels(label_sets, names, where)
        else:
            columns = [h for h in header if h != "image"]
            if names is None:
                names = _check_names(columns, f"{csv_path} header")
            missing = [n for n in names if n not in columns]
            if missing:
                raise ValueError(f"{csv_path}: label column(s) {missing} not in the header {header}")
            targets = torch.zeros(len(rows), len(names), dtype=torch.float32)
            for r, ((_, row), w) in enumerate(zip(rows, where)):
                for c, name in enumerate(names):
                    targets[r, c] = _parse_01((row.get(name) or "").strip(), f"{w}, column {name!r}")
        super().__init__(images, targets, names, transform, skip_bad)


def _parse_01(value: str, where: str) -> float:
    try:
        v = float(value)
    except ValueError:
        v = float("nan")
    if v not in (0.0, 1.0):
        raise ValueError(f"{where}: expected 0 or 1, got {value!r}")
    return v


# ----------------------------------------------------------------------------- COCO


class CocoDataset(MultiLabelDataset):
    """COCO ``instances_*.json``: image i has label c when any of its annotations has category c.

    Label order is the categories sorted by id (COCO 2014: 1..90 with gaps -> 0..79), images are in image-id
    order, and images without any annotation are kept as all-negative rows, as the authors' loader does
    (82,783 train images, not the 82,081 annotated ones). Crowd annotations count as positives too.
    """

    def __init__(
        self, instances_json: PathLike, image_dir: PathLike, transform: Transform | None = None, skip_bad: bool = False
    ) -> None:
        instances_json = Path(instances_json)
        if not instances_json.is_file():
            raise FileNotFoundError(f"COCO annotation file {instances_json} not found")
        with open(instances_json, encoding="utf-8") as f:
            data = json.load(f)
        for key in ("images", "categories"):
            if key not in data:
                raise ValueError(f"{instances_json}: no {key!r} key; is this a COCO instances file?")
        cats = sorted(data["categories"], key=lambda c: c["id"])
        cat_index = {c["id"]: i for i, c in enumerate(cats)}
        images = sorted(data["images"], key=lambda im: im["id"])
        img_index = {im["id"]: i for i, im in enumerate(images)}
        rows, cols = [], []  # one vectorised assignment below: COCO train has 604,907 annotations
        for ann in data.get("annotations", []):
            row, col = img_index.get(ann.get("image_id")), cat_index.get(ann.get("category_id"))
            if row is None or col is None:
                where = f"{instances_json}: annotation {ann.get('id', '?')}"
                if row is None:
                    raise ValueError(f"{where} refers to image id {ann.get('image_id')!r}, which is not in 'images'")
                raise ValueError(f"{where} has category id {ann.get('category_id')!r}, which is not in 'categories'")
            rows.append(row)
            cols.append(col)
        targets = torch.zeros(len(images), len(cats), dtype=torch.float32)
        targets[torch.as_tensor(rows, dtype=torch.long), torch.as_tensor(cols, dtype=torch.long)] = 1.0
        image_dir = Path(image_dir)
        paths = [_join(image_dir, im["file_name"]) for im in images]
        super().__init__(paths, targets, [c["name"] for c in cats], transform, skip_bad)
        self.image_ids: list[int] = [images[i]["id"] for i in self.source_index]


# ----------------------------------------------------------------------------- Pascal VOC


class VOCDataset(MultiLabelDataset):
    """Pascal VOC classification: ``ImageSets/Main/<split>.txt`` ids, labels from ``Annotations/<id>.xml``.

    ``root`` is the ``VOC<year>`` folder itself or any folder above it (``VOCdevkit``, or the authors'
    ``<dataset_dir>/VOC2007/VOCdevkit/VOC2007`` layout). ``difficult="negative"`` reproduces the authors:
    objects flagged difficult are ignored, so a class with only difficult objects is a negative;
    ``difficult="positive"`` counts them as positives. (VOC's third "ignore" state is not offered: the loss
    and the metric here take 0/1 targets.) The 20 labels are `VOC_CLASSES`, in the standard order.
    """

    def __init__(
        self,
        root: PathLike,
        split: str = "trainval",
        year: str = "2007",
        transform: Transform | None = None,
        difficult: str = "negative",
        skip_bad: bool = False,
    ) -> None:
        if difficult not in ("negative", "positive"):
            raise ValueError(f"difficult must be 'negative' or 'positive', got {difficult!r}")
        base = self._find_root(Path(root), str(year))
        list_file = base / "ImageSets" / "Main" / f"{split}.txt"
        if not list_file.is_file():
            raise FileNotFoundError(f"VOC split file {list_file} not found (split={split!r})")
        ids = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
        index = {name: i for i, name in enumerate(VOC_CLASSES)}
        targets = torch.zeros(len(ids), len(VOC_CLASSES), dtype=torch.float32)
        for row, image_id in enumerate(ids):
            xml_path = base / "Annotations" / f"{image_id}.xml"
            for name, is_difficult in self._objects(xml_path):
                if name not in index:
                    raise ValueError(f"{xml_path}: unknown VOC class {name!r}")
                if is_difficult and difficult == "negative":
                    continue
                targets[row, index[name]] = 1.0
        paths = [base / "JPEGImages" / f"{i}.jpg" for i in ids]
        super().__init__(paths, targets, VOC_CLASSES, transform, skip_bad)

    @staticmethod
    def _find_root(root: Path, year: str) -> Path:
        tried = [
            root,
            root / f"VOC{year}",
            root / "VOCdevkit" / f"VOC{year}",
            root / f"VOC{year}" / "VOCdevkit" / f"VOC{year}",
        ]
        for cand in tried:
            if (cand / "Annotations").is_dir() and (cand / "ImageSets" / "Main").is_dir():
                return cand
        raise FileNotFoundError(
            f"no VOC{year} folder (with Annotations/ and ImageSets/Main/) found; tried: "
            + ", ".join(str(t) for t in tried)
        )

    @staticmethod
    def _objects(xml_path: Path) -> list[tuple[str, bool]]:
        if not xml_path.is_file():
            raise FileNotFoundError(
                f"VOC annotation {xml_path} not found (test splits without released annotations cannot be "
                f"used for training or evaluation)"
            )
        try:
            tree = ET.parse(xml_path)
        except ET.ParseError as exc:
            raise ValueError(f"{xml_path}: not valid XML ({exc})") from exc
        objects = []
        for obj in tree.getroot().iter("object"):
            name = (obj.findtext("name") or "").strip()
            flag = (obj.findtext("difficult") or "0").strip()
            objects.append((name, flag not in ("0", "")))
        return objects


# ----------------------------------------------------------------------------- folder + labels file


class FolderDataset(MultiLabelDataset):
    """Images in one folder plus a labels file.

    The labels file is either text, one image per line ``filename label1 label2 ...`` (whitespace separated,
    so neither names nor labels may contain spaces; blank lines and ``#`` comments skipped), or JSON mapping
    filename -> list of labels. In JSON the labels may also be integer indices into ``label_names``
    (the VG-500 ``*_labels_index.json`` layout), which then must be given.
    """

    def __init__(
        self,
        image_dir: PathLike,
        labels_file: PathLike,
        transform: Transform | None = None,
        skip_bad: bool = False,
        label_names: LabelNames | None = None,
    ) -> None:
        image_dir, labels_file = Path(image_dir), Path(labels_file)
        if not labels_file.is_file():
            raise FileNotFoundError(f"labels file {labels_file} not found")
        names = _resolve_names(label_names)
        if labels_file.suffix.lower() == ".json":
            files, label_sets, where = self._read_json(labels_file, names)
        else:
            files, label_sets, where = self._read_text(labels_file)
        names = names if names is not None else make_label_names(label_sets)
        targets = encode_labels(label_sets, names, where)
        super().__init__([_join(image_dir, f) for f in files], targets, names, transform, skip_bad)

    @staticmethod
    def _read_text(path: Path) -> tuple[list[str], list[list[str]], list[str]]:
        files, label_sets, where = [], [], []
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            fields = line.split("#", 1)[0].split()
            if not fields:
                continue
            files.append(fields[0])
            label_sets.append(fields[1:])
            where.append(f"{path} line {line_no}")
        return files, label_sets, where

    @staticmethod
    def _read_json(path: Path, names: list[str] | None) -> tuple[list[str], list[list[str]], list[str]]:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object mapping file name -> list of labels")
        files, label_sets, where = [], [], []
        for fname, labels in data.items():
            w = f"{path} entry {fname!r}"
            if not isinstance(labels, list):
                raise ValueError(f"{w}: expected a list of labels, got {type(labels).__name__}")
            resolved = []
            for label in labels:
                if isinstance(label, bool) or not isinstance(label, (str, int)):
                    raise ValueError(f"{w}: label {label!r} is neither a name nor an integer index")
                if isinstance(label, int):
                    if names is None:
                        raise ValueError(f"{w}: integer label {label} needs label_names to say what it means")
                    if not 0 <= label < len(names):
                        raise ValueError(f"{w}: label index {label} is out of range for {len(names)} labels")
                    label = names[label]
                resolved.append(label)
            files.append(fname)
            label_sets.append(resolved)
            where.append(w)
        return files, label_sets, where
