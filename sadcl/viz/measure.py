"""Measurements behind the pictures: how much of a label's attention falls on the object (single-item
Fashion-MNIST mosaics), and the label-level embeddings and prototypes with their 2-D map.

* :func:`attention_on_cell` measures the category-related attention maps on single-item mosaics: how much of
  the present label's attention falls on the cell that holds the item (:func:`cell_shares` splits a map over
  the cells);
* :func:`label_embeddings` collects the label-level embeddings of positive labels and the class prototypes;
  :func:`embed_2d` reduces them to 2-D by PCA or t-SNE.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from ..inference import attention_maps, preprocess
from ..model import SADCL
from .deps import MissingDependencyError

__all__ = ["attention_on_cell", "cell_shares", "embed_2d", "label_embeddings"]


def _overlap(n_feat: int, n_cells: int) -> torch.Tensor:
    """``[n_feat, n_cells]``: the fraction of feature row (or column) i lying in mosaic row (column) r.

    Each feature position is taken to cover an equal slice of the image, so a grid finer than, coarser than
    or not aligned with the mosaic cells (odd sizes) still splits its attention exactly.
    """
    edges_f = torch.linspace(0, 1, n_feat + 1, dtype=torch.float64)
    edges_c = torch.linspace(0, 1, n_cells + 1, dtype=torch.float64)
    lo = torch.maximum(edges_f[:-1, None], edges_c[None, :-1])
    hi = torch.minimum(edges_f[1:, None], edges_c[None, 1:])
    return ((hi - lo).clamp(min=0) * n_feat).float()


def cell_shares(maps: torch.Tensor, grid: int = 2) -> torch.Tensor:
    """Attention maps ``[..., h, w]`` → the share of each map on each cell of a ``grid × grid`` mosaic,
    ``[..., grid * grid]`` (row-major, like ``make_mosaics``' items)."""
    rows, cols = _overlap(maps.shape[-2], grid), _overlap(maps.shape[-1], grid)
    return torch.einsum("...ij,ir,js->...rs", maps.float(), rows, cols).flatten(-2)


def _single_item_mosaics(n: int, seed: int, split: str, root: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` 56 × 56 mosaics holding one random Fashion-MNIST item in one random cell: (images, class, cell)."""
    from ..data.mosaic import GRID, ITEM, load_fashion_mnist

    items, classes = load_fashion_mnist(split, root)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(items), size=n)
    cell = rng.integers(0, GRID * GRID, size=n)
    images = np.zeros((n, GRID * ITEM, GRID * ITEM), dtype=np.uint8)
    for b in range(n):
        r, c = divmod(int(cell[b]), GRID)
        images[b, r * ITEM : (r + 1) * ITEM, c * ITEM : (c + 1) * ITEM] = items[idx[b]]
    return images, classes[idx], cell


def attention_on_cell(
    model: SADCL,
    n: int = 200,
    seed: int = 0,
    *,
    split: str = "test",
    root: str | os.PathLike | None = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Do the category-related attention maps look at the object? Measured on single-item mosaics.

    ``n`` mosaics (Fashion-MNIST ``split``) each hold one item in one random cell of the 2 × 2 grid. For the
    present label's query, the attention map is split over the four cells (:func:`cell_shares`).

    Returns ``mean_share`` (mean attention share on the item's cell; chance = 0.25 for a uniform map),
    ``top_cell_rate`` (fraction of images where the item's cell gets the largest share), ``chance``, ``n``
    and ``per_label`` (label -> mean share). The model's labels must be the Fashion-MNIST ones.
    """
    from ..data.mosaic import FASHION_LABELS, GRID, mosaic_to_pil

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if list(model.label_names) != list(FASHION_LABELS):
        raise ValueError(
            f"attention_on_cell needs a model with the Fashion-MNIST labels {list(FASHION_LABELS)}; "
            f"this model has {model.label_names[:5]}{' …' if model.num_classes > 5 else ''}"
        )
    images, classes, cells = _single_item_mosaics(n, seed, split, root)
    x = torch.stack([preprocess(mosaic_to_pil(im), model.pretrained_cfg) for im in images])
    maps = attention_maps(model, x, batch_size=batch_size, device=device)  # [n, C, h, w]
    rows = torch.arange(n)
    present = maps[rows, torch.from_numpy(classes)]  # [n, h, w]: the present label's query
    shares = cell_shares(present, GRID)  # [n, 4]
    on_cell = shares[rows, torch.from_numpy(cells)]
    top = shares.argmax(-1).numpy() == cells
    per_label = {
        FASHION_LABELS[c]: float(on_cell[torch.from_numpy(classes == c)].mean())
        for c in range(len(FASHION_LABELS))
        if (classes == c).any()
    }
    return dict(
        mean_share=float(on_cell.mean()),
        top_cell_rate=float(top.mean()),
        chance=1.0 / (GRID * GRID),
        n=n,
        feature_grid=tuple(maps.shape[-2:]),
        per_label=per_label,
    )


# -- label-level embeddings and prototypes --------------------------------------------------------------------
@torch.inference_mode()
def label_embeddings(
    model: SADCL,
    dataset: Dataset,
    *,
    n: int = 2000,
    projected: bool = True,
    batch_size: int = 64,
    device: str | torch.device | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label-level embeddings of the positive labels of the first ``n`` images of ``dataset``.

    ``dataset`` yields ``(image tensor [3, H, W] prepared for the model, target [C])`` with the model's label
    order. With ``projected`` the embeddings and prototypes go through the projection head and are
    L2-normalised (the contrastive space, where SSCL/PSCL compare them by cosine); otherwise they are the
    decoder's ``h`` and the raw prototypes.

    Returns ``(embeddings [M, D], labels [M] label index, prototypes [C, D])``, one row per (image, positive
    label) pair, image by image.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    names = getattr(dataset, "label_names", None)
    if names is not None and list(names) != list(model.label_names):
        raise ValueError(
            f"the dataset's labels {list(names)[:5]}… are not the model's {model.label_names[:5]}…: "
            "build the dataset with label_names=model.label_names"
        )
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval().to(dev)

    def embed(t: torch.Tensor) -> torch.Tensor:
        return F.normalize(model.project(t), dim=-1) if projected else t

    subset = Subset(dataset, range(min(n, len(dataset))))
    feats, labels = [], []
    try:
        for x, y in DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=0):
            if y.shape[-1] != model.num_classes:
                raise ValueError(f"dataset targets have {y.shape[-1]} labels, the model {model.num_classes}")
            pos = y.to(dev) > 0.5
            h = model.forward_features(x.to(dev))  # [B, C, d]
            feats.append(embed(h[pos]).float().cpu())
            labels.append(pos.nonzero()[:, 1].cpu())
        protos = embed(model.prototypes).float().cpu()
    finally:
        model.train(was_training)
    if not feats or sum(len(f) for f in feats) == 0:
        raise ValueError("the dataset has no positive label in the images read: nothing to plot")
    return torch.cat(feats).numpy(), torch.cat(labels).numpy(), protos.numpy()


def embed_2d(
    points: np.ndarray, extra: np.ndarray | None = None, method: str = "pca", seed: int = 0
) -> tuple[np.ndarray, np.ndarray | None]:
    """2-D coordinates of ``points`` (and of ``extra``, e.g. prototypes, in the same map).

    ``pca`` (default): principal axes of ``points`` (SVD), applied to both. ``tsne``: scikit-learn's t-SNE,
    fitted on both together (t-SNE cannot place new points afterwards).
    """
    pts = np.asarray(points, dtype=np.float64)
    ext = None if extra is None else np.asarray(extra, dtype=np.float64)
    if method == "pca":
        mean = pts.mean(0, keepdims=True)
        # Deterministic sign: each axis points to where the largest-magnitude loading is positive.
        _, _, vt = np.linalg.svd(pts - mean, full_matrices=False)
        axes = vt[:2]
        axes *= np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(1)])[:, None]
        if axes.shape[0] < 2:  # a single point or a 1-D cloud: pad the second axis
            axes = np.vstack([axes, np.zeros((2 - axes.shape[0], pts.shape[1]))])
        return (pts - mean) @ axes.T, None if ext is None else (ext - mean) @ axes.T
    if method == "tsne":
        try:
            from sklearn.manifold import TSNE
        except ImportError as e:
            raise MissingDependencyError(
                f"method='tsne' needs scikit-learn ({e}): pip install scikit-learn, or use method='pca'"
            ) from e
        both = pts if ext is None else np.vstack([pts, ext])
        if len(both) < 4:
            raise ValueError(f"t-SNE needs at least 4 points, got {len(both)}: use method='pca'")
        perplexity = float(min(30.0, (len(both) - 1) / 3))
        xy = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(both)
        return xy[: len(pts)], None if ext is None else xy[len(pts) :]
    raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}")
