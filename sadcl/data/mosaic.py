"""Fashion-MNIST multi-label mosaics: a small, license-clean multi-label task for tests and demos.

A mosaic is a 2 x 2 grid of 28 x 28 Fashion-MNIST items on a 56 x 56 black canvas. Each cell is filled
independently with probability 0.5 (a mosaic left empty is drawn again, so a cell is filled with probability
8/15 given the mosaic is not empty) by a uniformly random item of the split; the mosaic's labels are the set
of the item classes present. Train mosaics use only the train split, test mosaics only the t10k split, so no
item is shared. Everything is deterministic given the seed (a NumPy Generator).

The data comes from Debian's ``dataset-fashion-mnist`` package (``/usr/share/datasets/fashion-mnist``),
or any folder with the four original ``*-ubyte(.gz)`` files (``root=`` or ``$SADCL_FASHION_MNIST``).
"""

from __future__ import annotations

import csv
import gzip
import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .labels import read_labels

__all__ = [
    "FASHION_LABELS",
    "DEFAULT_FASHION_ROOT",
    "load_fashion_mnist",
    "make_mosaics",
    "mosaic_to_pil",
    "MosaicDataset",
    "write_mosaics",
]

FASHION_LABELS: tuple[str, ...] = read_labels("fashion10")  # Fashion-MNIST's class order
DEFAULT_FASHION_ROOT = "/usr/share/datasets/fashion-mnist"
ITEM = 28  # side of one Fashion-MNIST item
GRID = 2  # cells per side of a mosaic
FILL_P = 0.5  # probability that a cell holds an item

_PREFIX = {"train": "train", "test": "t10k", "t10k": "t10k"}
_MAGIC_IMAGES, _MAGIC_LABELS = 2051, 2049

PathLike = str | os.PathLike


def _split_prefix(split: str) -> str:
    if split not in _PREFIX:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return _PREFIX[split]


def _root(root: PathLike | None) -> Path:
    return Path(root if root is not None else os.environ.get("SADCL_FASHION_MNIST", DEFAULT_FASHION_ROOT))


def _find(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(
        f"Fashion-MNIST file {root / (stem + '.gz')} not found. Install the data with "
        f"`apt-get install dataset-fashion-mnist` (Debian/Ubuntu, into {DEFAULT_FASHION_ROOT}), or pass "
        f"root= (or set $SADCL_FASHION_MNIST) to a folder holding train/t10k-images-idx3-ubyte.gz and "
        f"train/t10k-labels-idx1-ubyte.gz"
    )


def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    """Parse one IDX file (big-endian header: magic, then one uint32 per dimension, then uint8 data)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise OSError(f"cannot read Fashion-MNIST file {path}: {exc}") from exc
    header = 4 * (1 + ndim)
    if len(raw) < header:
        raise ValueError(f"{path}: too short for an IDX file")
    fields = np.frombuffer(raw, dtype=">u4", count=1 + ndim)
    if int(fields[0]) != magic:
        raise ValueError(f"{path}: IDX magic number {int(fields[0])}, expected {magic}")
    shape = tuple(int(d) for d in fields[1:])
    if len(raw) - header != int(np.prod(shape)):
        raise ValueError(f"{path}: {len(raw) - header} data bytes, the header announces shape {shape}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


@lru_cache(maxsize=8)
def _load_cached(prefix: str, root: str) -> tuple[np.ndarray, np.ndarray]:
    images = _read_idx(_find(Path(root), f"{prefix}-images-idx3-ubyte"), _MAGIC_IMAGES, 3)
    labels = _read_idx(_find(Path(root), f"{prefix}-labels-idx1-ubyte"), _MAGIC_LABELS, 1).astype(np.int64)
    if images.shape[0] != labels.shape[0] or images.shape[1:] != (ITEM, ITEM):
        raise ValueError(f"{root}: {prefix} images {images.shape} do not match labels {labels.shape}")
    if labels.size and labels.max() >= len(FASHION_LABELS):
        raise ValueError(f"{root}: {prefix} labels go up to {labels.max()}, Fashion-MNIST has 10 classes")
    images.setflags(write=False)  # the arrays are shared by every caller through the cache
    labels.setflags(write=False)
    return images, labels


def load_fashion_mnist(split: str, root: PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST ``split`` ("train": 60k, "test" = t10k: 10k) as read-only (uint8 [N, 28, 28], int64 [N]).

    Cached per process and root.
    """
    return _load_cached(_split_prefix(split), str(_root(root).resolve()))


def make_mosaics(
    split: str, n: int, seed: int, root: PathLike | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Compose ``n`` mosaics from ``split``, deterministically from ``seed``.

    Returns:
        images: uint8 [n, 56, 56] grayscale, empty cells black.
        targets: float32 [n, 10], 1 for each class present (order `FASHION_LABELS`).
        items: int64 [n, 4] index into the split of the item in each cell (row-major), -1 for empty cells.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    src_images, src_labels = load_fashion_mnist(split, root)
    rng = np.random.default_rng(seed)
    cells = GRID * GRID
    filled = rng.random((n, cells)) < FILL_P
    empty = ~filled.any(axis=1)
    while empty.any():  # an empty mosaic has no label: draw its cells again
        filled[empty] = rng.random((int(empty.sum()), cells)) < FILL_P
        empty = ~filled.any(axis=1)
    items = rng.integers(0, len(src_images), size=(n, cells), dtype=np.int64)
    items[~filled] = -1

    images = np.zeros((n, GRID * ITEM, GRID * ITEM), dtype=np.uint8)
    targets = np.zeros((n, len(FASHION_LABELS)), dtype=np.float32)
    rows = np.arange(n)
    for k in range(cells):
        r, c = divmod(k, GRID)
        has = filled[:, k]
        images[has, r * ITEM : (r + 1) * ITEM, c * ITEM : (c + 1) * ITEM] = src_images[items[has, k]]
        targets[rows[has], src_labels[items[has, k]]] = 1.0
    return images, targets, items


def mosaic_to_pil(image: np.ndarray) -> Image.Image:
    """A [56, 56] uint8 mosaic as a PIL RGB image (gray replicated to 3 channels)."""
    return Image.fromarray(np.ascontiguousarray(image), mode="L").convert("RGB")


def _file_name(split: str, index: int) -> str:
    # Index-only names: no label text (e.g. "T-shirt/top") ever reaches the file system.
    return f"{split}/{split}_{index:06d}.png"


class MosaicDataset(Dataset):
    """In-memory Fashion-MNIST mosaics yielding ``(transform(PIL RGB), target float32 [10])``.

    ``paths`` holds the relative file names `write_mosaics` gives the same mosaics (nothing is on disk).
    """

    def __init__(
        self,
        split: str,
        n: int,
        seed: int,
        transform: Callable[[Image.Image], torch.Tensor] | None = None,
        root: PathLike | None = None,
    ) -> None:
        images, targets, items = make_mosaics(split, n, seed, root)
        self.split, self.seed, self.transform = split, seed, transform
        self.images = images
        self.items = items
        self.targets = torch.from_numpy(targets)
        self.label_names = list(FASHION_LABELS)
        self.paths = [_file_name(split, i) for i in range(n)]
        self.num_skipped, self.skipped = 0, []

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = mosaic_to_pil(self.images[index])
        if self.transform is not None:
            x = self.transform(img)
        else:
            x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float().div_(255.0)
        return x, self.targets[index].clone()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(split={self.split!r}, n={len(self)}, seed={self.seed})"


def write_mosaics(out_dir: PathLike, split: str, n: int, seed: int, root: PathLike | None = None) -> Path:
    """Write ``n`` mosaics as RGB PNGs plus ``<out_dir>/<split>.csv`` and ``<out_dir>/labels.txt``.

    The CSV has columns ``image`` (relative to ``out_dir``), ``labels`` (``|``-separated class names) and
    ``items`` (the 4 source indices, -1 = empty); read it back with
    ``CSVDataset(csv_path, label_names=out_dir / "labels.txt")`` to keep the `FASHION_LABELS` order
    (without ``label_names`` the order is alphabetical). Returns the CSV path.
    """
    out_dir = Path(out_dir)
    images, targets, items = make_mosaics(split, n, seed, root)
    (out_dir / split).mkdir(parents=True, exist_ok=True)
    (out_dir / "labels.txt").write_text("".join(f"{name}\n" for name in FASHION_LABELS), encoding="utf-8")
    csv_path = out_dir / f"{split}.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "labels", "items"])
        for i in range(n):
            name = _file_name(split, i)
            mosaic_to_pil(images[i]).save(out_dir / name)
            labels = "|".join(FASHION_LABELS[c] for c in np.flatnonzero(targets[i]))
            writer.writerow([name, labels, " ".join(str(int(v)) for v in items[i])])
    return csv_path
