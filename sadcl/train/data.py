"""The data of a run: where a dataset lives (:class:`DataSpec`), building it, its label order against the
model's, and the checks and loader wrapping that keep a bad image file to one clear line."""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from torch.utils.data import Dataset

from .._text import printable
from ..data import CocoDataset, CSVDataset, FolderDataset, VOCDataset
from ..data.datasets import MultiLabelDataset, missing_files, unwrap_worker_errors
from ..data.images import ImageLoadError
from ..data.layouts import LAYOUTS, SPLITS, load_split

__all__ = [
    "DATA_FORMATS",
    "DataSpec",
    "build_dataset",
    "check_image_files",
    "label_order",
    "unwrapped",
    "with_transform",
]

DATA_FORMATS = ("csv", "coco", "voc", "folder", *LAYOUTS)


@dataclass
class DataSpec:
    """Where a multi-label dataset lives.

    ``format``: ``csv`` (``path`` = CSV file, ``images`` = image root, default the CSV's folder),
    ``coco`` (``path`` = ``instances_*.json``, ``images`` = image folder), ``voc`` (``path`` = a VOC root,
    ``split`` default ``trainval``, ``year``), ``folder`` (``path`` = labels file, ``images`` = image folder),
    or one of the paper's datasets in its own layout, :data:`~sadcl.data.layouts.LAYOUTS` (``coco2014``,
    ``voc2007``, ``voc2012``, ``nuswide``, ``vg500``: ``path`` = the data root, ``split`` ``train`` (default)
    or ``val``; :func:`~sadcl.data.layouts.load_split`).
    ``label_names``: a label-name file fixing the label order (csv/folder). ``skip_bad`` drops unreadable images.
    """

    path: str
    format: str = "csv"
    images: str | None = None
    split: str | None = None
    year: str = "2007"
    label_names: str | None = None
    skip_bad: bool = False

    def __post_init__(self) -> None:
        self.path = os.fspath(self.path)
        self.images = None if self.images is None else os.fspath(self.images)
        if self.format not in DATA_FORMATS:
            raise ValueError(f"data format must be one of {', '.join(DATA_FORMATS)}, got {self.format!r}")
        if self.format in ("coco", "folder") and self.images is None:
            what = "the COCO image folder" if self.format == "coco" else "the image folder"
            raise ValueError(f"{self.format} data at {self.path} needs {what} (--images / DataSpec.images)")
        if self.format in LAYOUTS:
            if self.images is not None:
                raise ValueError(
                    f"{self.format} data: its layout fixes where the images are, so no image folder may be given "
                    "(--images / DataSpec.images); give only the data root"
                )
            if self.label_names is not None:
                raise ValueError(
                    f"{self.format} data has its dataset's fixed label set, so no label-name file may be given "
                    "(--label-names / DataSpec.label_names)"
                )
            self.split = self.split or "train"
            if self.split not in SPLITS:
                raise ValueError(f"the split of {self.format} data must be train or val, got {self.split!r}")


def build_dataset(spec: DataSpec, transform: Any = None, label_names: Sequence[str] | None = None) -> Dataset:
    """The dataset ``spec`` describes, with ``transform``. ``label_names`` fixes the label order (csv/folder:
    a label outside it is an error naming the row; coco/voc have fixed label sets)."""
    if spec.format in LAYOUTS:
        return load_split(spec.format, spec.path, spec.split or "train", transform=transform, skip_bad=spec.skip_bad)
    names: Any = list(label_names) if label_names is not None else spec.label_names
    if spec.format == "csv":
        return CSVDataset(
            spec.path, image_root=spec.images, label_names=names, transform=transform, skip_bad=spec.skip_bad
        )
    if spec.format == "coco":
        return CocoDataset(spec.path, spec.images, transform=transform, skip_bad=spec.skip_bad)
    if spec.format == "voc":
        return VOCDataset(
            spec.path, split=spec.split or "trainval", year=spec.year, transform=transform, skip_bad=spec.skip_bad
        )
    return FolderDataset(spec.images, spec.path, transform=transform, skip_bad=spec.skip_bad, label_names=names)


def label_order(dataset_names: Sequence[str], model_names: Sequence[str], what: str) -> list[int] | None:
    """Column ``i`` of the dataset is model output ``order[i]`` (``None`` when the orders already agree)."""
    dataset_names, model_names = list(dataset_names), list(model_names)
    if dataset_names == model_names:
        return None
    missing = [n for n in dataset_names if n not in model_names]
    extra = [n for n in model_names if n not in dataset_names]
    if missing or extra:
        raise ValueError(
            f"{what}: its labels do not match the model's ({len(dataset_names)} vs {len(model_names)}); "
            f"labels the model lacks: {missing[:10]}; model labels absent from the data: {extra[:10]}"
        )
    index = {n: i for i, n in enumerate(model_names)}
    return [index[n] for n in dataset_names]


def with_transform(dataset: Dataset, transform: Any, what: str) -> Dataset:
    """A shallow copy of ``dataset`` using ``transform`` (datasets here keep it in ``.transform``)."""
    if not hasattr(dataset, "transform"):
        warnings.warn(f"{what}: {type(dataset).__name__} has no `transform` attribute; using it as given", stacklevel=3)
        return dataset
    out = copy.copy(dataset)
    out.transform = transform
    return out


def unwrapped(loader: Iterable[Any]) -> Iterator[Any]:
    """The batches of ``loader``; an error of a DataLoader worker arrives as the worker raised it (one line)."""
    with unwrap_worker_errors():
        yield from loader


def check_image_files(dataset: Dataset | None, what: str) -> None:
    """Every image file of ``dataset`` (a dataset of image files) exists and is a regular file: one stat
    each, so a missing validation image stops the run before the first epoch, not after it."""
    if not isinstance(dataset, MultiLabelDataset):  # e.g. mosaics built in memory: no files to check
        return
    paths = dataset.paths
    missing = missing_files(paths)
    if missing:
        raise ImageLoadError(
            f"{what} image {printable(missing[0])} is missing or not a regular file ({len(missing)} of "
            f"{len(paths)} {what} images are; checked before any work). Fix the paths, or drop unreadable "
            "images with --skip-bad (DataSpec.skip_bad)"
        )
