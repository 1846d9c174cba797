"""Fashion-MNIST multi-label mosaics (sadcl.data.mosaic).

Most tests run on a tiny synthetic Fashion-MNIST written in the original IDX format (fast, and independent
of the system package); one test checks the installed Debian copy, or the install hint when it is absent.
"""

from __future__ import annotations

from pathlib import Path

import needs
import numpy as np
import pytest
import torch
from fakedata import write_idx

from sadcl.data import FASHION_LABELS, CSVDataset, MosaicDataset, load_fashion_mnist, make_mosaics, write_mosaics

N_TRAIN, N_TEST = 50, 30


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Synthetic Fashion-MNIST: every item has nonzero pixels; train and test items never coincide."""
    root = tmp_path_factory.mktemp("fmnist")
    rng = np.random.default_rng(0)
    for prefix, n, lo, hi in (("train", N_TRAIN, 1, 128), ("t10k", N_TEST, 128, 256)):
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(lo, hi, (n, 28, 28)), 2051)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10, 2049)
    return root


def _cells(mosaic):
    return [mosaic[r * 28 : (r + 1) * 28, c * 28 : (c + 1) * 28] for r in range(2) for c in range(2)]


def test_load_synthetic(root):
    images, labels = load_fashion_mnist("train", root)
    assert images.shape == (N_TRAIN, 28, 28) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and labels.tolist() == [i % 10 for i in range(N_TRAIN)]
    assert load_fashion_mnist("test", root)[0].shape == (N_TEST, 28, 28)
    assert load_fashion_mnist("train", root)[0] is images  # cached per process
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("val", root)


@pytest.mark.parametrize("split,other", [("train", "test"), ("test", "train")])
def test_split_separation_and_labels(root, split, other):
    src, src_labels = load_fashion_mnist(split, root)
    other_images = load_fashion_mnist(other, root)[0]
    images, targets, items = make_mosaics(split, 300, seed=1, root=root)
    assert images.shape == (300, 56, 56) and images.dtype == np.uint8
    assert targets.shape == (300, 10) and targets.dtype == np.float32
    assert items.shape == (300, 4) and items.dtype == np.int64
    assert ((items >= -1) & (items < len(src))).all()
    assert ((items >= 0).any(axis=1)).all() and (targets.sum(axis=1) >= 1).all()  # no empty mosaic
    for mosaic, target, row in zip(images, targets, items):
        for cell, item in zip(_cells(mosaic), row):
            if item < 0:
                assert not cell.any()  # empty cell: black
            else:
                assert np.array_equal(cell, src[item])
                assert not (other_images == cell).all(axis=(1, 2)).any()  # never an item of the other split
        present = {int(src_labels[i]) for i in row if i >= 0}
        assert set(np.flatnonzero(target).tolist()) == present


def test_determinism(root):
    a = make_mosaics("train", 64, seed=7, root=root)
    b = make_mosaics("train", 64, seed=7, root=root)
    c = make_mosaics("train", 64, seed=8, root=root)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[2], c[2])


def test_cell_fill_probability(root):
    _, _, items = make_mosaics("train", 20000, seed=0, root=root)
    filled = items >= 0
    # p = 0.5 per cell, conditioned on a non-empty mosaic: 0.5 / (1 - 1/16) = 8/15
    assert abs(filled.mean() - 8 / 15) < 0.01
    assert np.abs(filled.mean(axis=0) - 8 / 15).max() < 0.02  # every cell alike
    counts = np.bincount(filled.sum(axis=1), minlength=5) / len(items)
    assert counts[0] == 0
    assert np.abs(counts[1:] - np.array([4, 6, 4, 1]) / 15).max() < 0.01  # Binomial(4, 1/2) without k = 0
    used = np.unique(items[filled])
    assert len(used) == N_TRAIN  # items drawn uniformly from the whole split


def test_mosaic_dataset(root):
    ds = MosaicDataset("test", 10, seed=3, root=root)
    images, targets, items = make_mosaics("test", 10, seed=3, root=root)
    assert len(ds) == 10 and ds.label_names == list(FASHION_LABELS)
    assert torch.equal(ds.targets, torch.from_numpy(targets)) and np.array_equal(ds.items, items)
    x, y = ds[4]
    assert x.shape == (3, 56, 56) and x.dtype == torch.float32
    assert torch.equal(y, torch.from_numpy(targets[4]))
    expected = torch.from_numpy(images[4]).float() / 255
    assert all(torch.equal(x[ch], expected) for ch in range(3))  # gray replicated to RGB
    ds = MosaicDataset("test", 10, seed=3, root=root, transform=lambda img: torch.tensor(img.size))
    assert ds[0][0].tolist() == [56, 56]


def test_csv_round_trip(root, tmp_path):
    csv_path = write_mosaics(tmp_path / "out", "train", 12, seed=2, root=root)
    images, targets, items = make_mosaics("train", 12, seed=2, root=root)
    ds = CSVDataset(csv_path, label_names=tmp_path / "out" / "labels.txt")
    assert ds.label_names == list(FASHION_LABELS)
    assert torch.equal(ds.targets, torch.from_numpy(targets))
    for i in (0, 11):
        x, _ = ds[i]
        assert torch.equal((x * 255).round().to(torch.uint8)[0], torch.from_numpy(images[i]))
        assert x.shape == (3, 56, 56)
    names = [Path(p).relative_to(tmp_path / "out").as_posix() for p in ds.paths]
    assert names[0] == "train/train_000000.png" and all("/" not in Path(n).name for n in names)
    # without label_names: the sorted union of the labels present, "T-shirt/top" (with its slash) included
    plain = CSVDataset(csv_path)
    present = sorted(FASHION_LABELS[c] for c in np.flatnonzero(targets.any(axis=0)))
    assert "T-shirt/top" in present and plain.label_names == present
    order = [FASHION_LABELS.index(n) for n in plain.label_names]
    assert torch.equal(plain.targets, torch.from_numpy(targets[:, order]))


def test_missing_root_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("train", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        make_mosaics("test", 3, seed=0, root=tmp_path / "nowhere")


def test_corrupt_idx_is_reported(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((2, 28, 28)), 9999)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(2), 2049)
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz.*magic"):
        load_fashion_mnist("train", tmp_path)


@needs.fashion_mnist
def test_installed_fashion_mnist():
    """The real data (without it, the install hint: test_missing_root_says_how_to_install)."""
    train, train_labels = load_fashion_mnist("train")
    test, test_labels = load_fashion_mnist("test")
    assert train.shape == (60000, 28, 28) and test.shape == (10000, 28, 28)
    assert np.bincount(train_labels).tolist() == [6000] * 10 and np.bincount(test_labels).tolist() == [1000] * 10
    images, targets, items = make_mosaics("test", 50, seed=0)
    for mosaic, target, row in zip(images, targets, items):
        for cell, item in zip(_cells(mosaic), row):
            assert np.array_equal(cell, test[item]) if item >= 0 else not cell.any()
        assert set(np.flatnonzero(target).tolist()) == {int(test_labels[i]) for i in row if i >= 0}
