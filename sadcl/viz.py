"""Pictures of what SADCL learns: category-related attention maps and the label-level embedding space.

* :func:`overlay_attention` draws the paper's category-related attention maps (one per label query, the last
  decoder layer's cross-attention) over the image;
* :func:`attention_on_cell` measures them on single-item Fashion-MNIST mosaics: how much of the present
  label's attention falls on the cell that holds the item;
* :func:`plot_embeddings` shows the label-level embeddings of positive labels (in the contrastive space by
  default) next to the class prototypes, reduced to 2-D by PCA or t-SNE.

matplotlib is an optional dependency (``pip install 'sadcl[viz]'``), imported only when a figure is drawn;
figures are plain :class:`matplotlib.figure.Figure` objects (no pyplot state, no GUI backend needed).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Mapping, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from .data.images import load_image
from .inference import ImageInput, attention_maps, preprocess
from .model import SADCL

if TYPE_CHECKING:  # only for annotations: matplotlib stays optional
    from matplotlib.figure import Figure

__all__ = [
    "MissingDependencyError",
    "attention_on_cell",
    "cell_shares",
    "embed_2d",
    "explain",
    "label_embeddings",
    "overlay_attention",
    "plot_embeddings",
    "save_figure",
]

MapInput = Union[torch.Tensor, np.ndarray, Mapping[str, Any]]
PANEL_INCHES = 3.0  # side of one attention panel
EMBED_INCHES = (8.0, 6.5)


class MissingDependencyError(ImportError, RuntimeError):
    """An optional dependency is not installed. Also a RuntimeError, so ``sadcl`` commands report it in one
    line like any other bad-input error."""


def _matplotlib() -> Any:
    """Import matplotlib lazily (the ``viz`` extra); the parent package first, so that a blocked or missing
    matplotlib is detected even when one of its submodules is already cached."""
    try:
        import matplotlib
        import matplotlib.colors  # noqa: F401
        import matplotlib.figure  # noqa: F401
        from matplotlib import colormaps  # noqa: F401
    except ImportError as e:
        raise MissingDependencyError(
            f"sadcl.viz draws with matplotlib, which is not installed ({e}): pip install 'sadcl[viz]'"
        ) from e
    return matplotlib


def save_figure(fig: "Figure", path: str | os.PathLike, dpi: int = 100) -> str:
    """Write ``fig`` (PNG, PDF, SVG … by the suffix), creating the folder; the pixel size is figsize × dpi."""
    path = os.fspath(path)
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


# -- category-related attention maps -----------------------------------------------------------------------
def _image_array(image: ImageInput | np.ndarray | torch.Tensor) -> np.ndarray:
    """The image to draw under the maps, as uint8 ``[H, W, 3]`` (a path, PIL image or HxW(x3) array)."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
            arr = arr.transpose(1, 2, 0)  # CHW → HWC
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=-1)
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise ValueError(f"image array must be [H, W], [H, W, 3] or [3, H, W], got shape {image.shape}")
        if arr.dtype != np.uint8:  # floats in [0, 1] (an unnormalised tensor), else assumed 0–255
            scale = 255.0 if float(np.nanmax(arr)) <= 1.0 else 1.0
            arr = np.clip(arr * scale, 0, 255).astype(np.uint8)
        return arr
    return np.asarray(load_image(image))


def _select_maps(maps: MapInput, labels: Sequence[str] | None) -> tuple[list[str], torch.Tensor]:
    """Panels: the labels to draw and their maps stacked ``[K, h, w]``."""
    if isinstance(maps, Mapping):
        names = list(maps) if labels is None else [str(n) for n in labels]
        missing = [n for n in names if n not in maps]
        if missing:
            raise ValueError(f"no attention map for label(s) {missing}; maps are given for {list(maps)}")
        stacked = torch.stack([torch.as_tensor(np.asarray(maps[n]), dtype=torch.float32) for n in names])
    else:
        stacked = torch.as_tensor(np.asarray(maps), dtype=torch.float32)
        if stacked.dim() == 2:
            stacked = stacked[None]
        if stacked.dim() != 3:
            raise ValueError(f"maps must be [C, h, w] (or a dict label -> [h, w]), got shape {tuple(stacked.shape)}")
        if labels is None:
            raise ValueError("labels are required with a [C, h, w] maps array: one name per map")
        names = [str(n) for n in labels]
        if len(names) != stacked.shape[0]:
            raise ValueError(f"{len(names)} labels for {stacked.shape[0]} maps: give one label per map")
    if stacked.dim() != 3:
        raise ValueError(f"each attention map must be 2-D [h, w], got maps of shape {tuple(stacked.shape)}")
    if not names:
        raise ValueError("no label to draw")
    return names, stacked


def _score_list(scores: Mapping[str, float] | Sequence[float] | None, names: Sequence[str]) -> list[float | None]:
    if scores is None:
        return [None] * len(names)
    if isinstance(scores, Mapping):
        return [float(scores[n]) if n in scores else None for n in names]
    scores = [float(s) for s in np.asarray(scores, dtype=np.float64).reshape(-1)]
    if len(scores) != len(names):
        raise ValueError(f"{len(scores)} scores for {len(names)} labels: give one score per label (or a dict)")
    return scores


def overlay_attention(
    image: ImageInput | np.ndarray | torch.Tensor,
    maps: MapInput,
    labels: Sequence[str] | None = None,
    scores: Mapping[str, float] | Sequence[float] | None = None,
    *,
    alpha: float = 0.5,
    cmap: str = "jet",
    ncols: int | None = None,
) -> "Figure":
    """One panel per label: its category-related attention map over the image.

    Args:
        image: the image the maps were computed on (path, PIL image or array), drawn at its own size.
        maps: ``[C, h, w]`` maps (e.g. ``attention_maps(model, img)[0]``), one per name of ``labels``; or a
            dict label -> ``[h, w]`` map, of which ``labels`` picks the panels (default: all, in dict order).
        labels: the panel labels, in order.
        scores: optional per-label scores for the titles ("label score"): a dict or one value per panel.
        alpha: opacity of the map over the image.
        ncols: panels per row (default: up to 4).

    Each map is upsampled bilinearly to the image size (the model squashes the image to its input size, so
    the feature grid spans the whole image) and drawn from 0 to its own maximum.
    """
    mpl = _matplotlib()
    img = _image_array(image)
    names, stacked = _select_maps(maps, labels)
    score_list = _score_list(scores, names)
    h, w = img.shape[:2]
    up = F.interpolate(stacked[:, None], size=(h, w), mode="bilinear", align_corners=False)[:, 0].numpy()

    k = len(names)
    ncols = max(1, min(ncols or 4, k))
    nrows = -(-k // ncols)
    fig = mpl.figure.Figure(figsize=(PANEL_INCHES * ncols, PANEL_INCHES * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= k:
            continue
        ax.imshow(img)
        ax.imshow(up[i], cmap=cmap, alpha=alpha, vmin=0.0, vmax=max(float(up[i].max()), 1e-12),
                  interpolation="bilinear")
        title = names[i] if score_list[i] is None else f"{names[i]} {score_list[i]:.2f}"
        ax.set_title(title, fontsize=11)
    return fig


def explain(
    model: SADCL,
    image: ImageInput,
    labels: Sequence[str] | None = None,
    *,
    top_k: int = 3,
    device: str | torch.device | None = None,
    **overlay_kwargs: Any,
) -> "Figure":
    """Score ``image`` and draw the attention maps of ``labels`` (default: the ``top_k`` labels by score),
    titled with their scores. An unknown label is a ValueError naming it and listing the model's labels."""
    _matplotlib()  # fail before running the model when matplotlib is missing
    if labels:
        unknown = [n for n in labels if n not in model.label_names]
        if unknown:
            raise ValueError(f"unknown label(s) {unknown} for this model; valid labels: {', '.join(model.label_names)}")
    elif top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    x = preprocess(image, model.pretrained_cfg)[None].to(dev)
    was_training = model.training
    model.eval().to(dev)
    try:  # one pass gives both: the logits are the group-wise head on the same label-level embeddings
        with torch.inference_mode():
            h, maps = model.forward_attention(x)
            scores = torch.sigmoid(model.forward_head(h)).float().cpu()[0]
    finally:
        model.train(was_training)
    maps = maps.float().cpu()[0]
    if labels:
        index = [model.label_names.index(n) for n in labels]
    else:
        index = scores.argsort(descending=True)[:top_k].tolist()
    names = [model.label_names[i] for i in index]
    return overlay_attention(image, maps[index], names, scores[index].tolist(), **overlay_kwargs)


# -- a measurable check: attention on single-item mosaics -----------------------------------------------------
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
    from .data.mosaic import GRID, ITEM, load_fashion_mnist

    items, classes = load_fashion_mnist(split, root)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(items), size=n)
    cell = rng.integers(0, GRID * GRID, size=n)
    images = np.zeros((n, GRID * ITEM, GRID * ITEM), dtype=np.uint8)
    for b in range(n):
        r, c = divmod(int(cell[b]), GRID)
        images[b, r * ITEM:(r + 1) * ITEM, c * ITEM:(c + 1) * ITEM] = items[idx[b]]
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
    from .data.mosaic import FASHION_LABELS, GRID, mosaic_to_pil

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if list(model.label_names) != list(FASHION_LABELS):
        raise ValueError(f"attention_on_cell needs a model with the Fashion-MNIST labels {list(FASHION_LABELS)}; "
                         f"this model has {model.label_names[:5]}{' …' if model.num_classes > 5 else ''}")
    images, classes, cells = _single_item_mosaics(n, seed, split, root)
    x = torch.stack([preprocess(mosaic_to_pil(im), model.pretrained_cfg) for im in images])
    maps = attention_maps(model, x, batch_size=batch_size, device=device)  # [n, C, h, w]
    rows = torch.arange(n)
    present = maps[rows, torch.from_numpy(classes)]  # [n, h, w]: the present label's query
    shares = cell_shares(present, GRID)  # [n, 4]
    on_cell = shares[rows, torch.from_numpy(cells)]
    top = shares.argmax(-1).numpy() == cells
    per_label = {FASHION_LABELS[c]: float(on_cell[torch.from_numpy(classes == c)].mean())
                 for c in range(len(FASHION_LABELS)) if (classes == c).any()}
    return dict(mean_share=float(on_cell.mean()), top_cell_rate=float(top.mean()), chance=1.0 / (GRID * GRID),
                n=n, feature_grid=tuple(maps.shape[-2:]), per_label=per_label)


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
        raise ValueError(f"the dataset's labels {list(names)[:5]}… are not the model's {model.label_names[:5]}…: "
                         "build the dataset with label_names=model.label_names")
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


def embed_2d(points: np.ndarray, extra: np.ndarray | None = None, method: str = "pca",
             seed: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
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
            raise MissingDependencyError(f"method='tsne' needs scikit-learn ({e}): pip install scikit-learn, "
                                         "or use method='pca'") from e
        both = pts if ext is None else np.vstack([pts, ext])
        if len(both) < 4:
            raise ValueError(f"t-SNE needs at least 4 points, got {len(both)}: use method='pca'")
        perplexity = float(min(30.0, (len(both) - 1) / 3))
        xy = TSNE(n_components=2, init="pca", perplexity=perplexity, random_state=seed).fit_transform(both)
        return xy[:len(pts)], None if ext is None else xy[len(pts):]
    raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}")


def _colours(mpl: Any, k: int) -> list:
    name = "tab10" if k <= 10 else "tab20" if k <= 20 else "turbo"
    cmap = mpl.colormaps[name]
    return [cmap(i) for i in range(k)] if k <= 20 else [cmap(i / max(k - 1, 1)) for i in range(k)]


def plot_embeddings(
    model: SADCL,
    dataset: Dataset,
    *,
    n: int = 2000,
    method: str = "pca",
    projected: bool = True,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    seed: int = 0,
    title: str | None = None,
) -> "Figure":
    """Scatter plot of the label-level embeddings of positive labels (from up to ``n`` images), coloured by
    label, with the class prototypes as large black-edged stars in the same 2-D map.

    See :func:`label_embeddings` for ``dataset`` and ``projected``, :func:`embed_2d` for ``method``. Only
    the labels present in the images read are drawn (points, prototype and legend entry).
    """
    mpl = _matplotlib()
    from matplotlib.lines import Line2D

    emb, lab, protos = label_embeddings(model, dataset, n=n, projected=projected, batch_size=batch_size,
                                        device=device)
    present = np.unique(lab)
    xy, pxy = embed_2d(emb, protos[present], method=method, seed=seed)
    colours = _colours(mpl, len(present))

    fig = mpl.figure.Figure(figsize=EMBED_INCHES, layout="constrained")
    ax = fig.subplots()
    order = np.random.default_rng(seed).permutation(len(xy))  # no label systematically drawn on top
    colour_of = {int(c): colours[i] for i, c in enumerate(present)}
    ax.scatter(xy[order, 0], xy[order, 1], s=6, alpha=0.6, linewidths=0,
               c=[colour_of[int(c)] for c in lab[order]])
    ax.scatter(pxy[:, 0], pxy[:, 1], s=320, marker="*", c=colours, edgecolors="black", linewidths=1.2, zorder=3)
    handles = [Line2D([], [], ls="", marker="o", ms=6, color=colour_of[int(c)], label=model.label_names[c])
               for c in present]
    handles.append(Line2D([], [], ls="", marker="*", ms=14, markerfacecolor="white", markeredgecolor="black",
                          label="prototype"))
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False,
              ncols=1 if len(handles) <= 25 else 2)
    space = "projected (contrastive space)" if projected else "label-level h"
    ax.set_title(title or f"{space}, {method.upper()}: {len(xy)} positive labels, {len(present)} classes",
                 fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    return fig
