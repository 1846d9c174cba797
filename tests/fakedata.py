"""Small synthetic Fashion-MNIST files in the original IDX format, so tests need neither the real data nor time."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np


def write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    """One gzipped IDX file (big-endian header: magic, then each dimension)."""
    header = np.array([magic, *array.shape], dtype=">u4").tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_split(root: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images, 2051)
    write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels, 2049)


def write_banded_fashion(root: Path, n_train: int, n_test: int) -> Path:
    """Learnable fake items: class ``c`` is bright in the row band ``2c .. 2c+8`` over dark noise."""
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 60, (n, 28, 28))
        for i, c in enumerate(labels):
            images[i, 2 * c : 2 * c + 8] += 180
        write_split(root, prefix, images, labels)
    return root
