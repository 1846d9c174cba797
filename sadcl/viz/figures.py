"""Pictures of what SADCL learns: category-related attention maps and the label-level embedding space.

* :func:`overlay_attention` draws the paper's category-related attention maps (one per label query, the last
  decoder layer's cross-attention) over the image; :func:`explain` scores an image and draws its top labels';
* :func:`plot_embeddings` shows the label-level embeddings of positive labels (in the contrastive space by
  default) next to the class prototypes, reduced to 2-D by PCA or t-SNE (:mod:`sadcl.viz.measure`).

matplotlib is an optional dependency (``pip install 'sadcl[viz]'``), imported only when a figure is drawn;
figures are plain :class:`matplotlib.figure.Figure` objects (no pyplot state, no GUI backend needed).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..data.images import load_image
from ..inference import ImageInput, preprocess
from ..model import SADCL
from .deps import load_matplotlib
from .measure import embed_2d, label_embeddings

if TYPE_CHECKING:  # only for annotations: matplotlib stays optional
    from matplotlib.figure import Figure

__all__ = ["explain", "overlay_attention", "plot_embeddings", "save_figure"]

MapInput = torch.Tensor | np.ndarray | Mapping[str, Any]
PANEL_INCHES = 3.0  # side of one attention panel
EMBED_INCHES = (8.0, 6.5)


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 100) -> str:
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
) -> Figure:
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
    mpl = load_matplotlib()
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
        ax.imshow(
            up[i], cmap=cmap, alpha=alpha, vmin=0.0, vmax=max(float(up[i].max()), 1e-12), interpolation="bilinear"
        )
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
) -> Figure:
    """Score ``image`` and draw the attention maps of ``labels`` (default: the ``top_k`` labels by score),
    titled with their scores. An unknown label is a ValueError naming it and listing the model's labels."""
    load_matplotlib()  # fail before running the model when matplotlib is missing
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
) -> Figure:
    """Scatter plot of the label-level embeddings of positive labels (from up to ``n`` images), coloured by
    label, with the class prototypes as large black-edged stars in the same 2-D map.

    See :func:`label_embeddings` for ``dataset`` and ``projected``, :func:`embed_2d` for ``method``. Only
    the labels present in the images read are drawn (points, prototype and legend entry).
    """
    mpl = load_matplotlib()
    from matplotlib.lines import Line2D

    emb, lab, protos = label_embeddings(model, dataset, n=n, projected=projected, batch_size=batch_size, device=device)
    present = np.unique(lab)
    xy, pxy = embed_2d(emb, protos[present], method=method, seed=seed)
    colours = _colours(mpl, len(present))

    fig = mpl.figure.Figure(figsize=EMBED_INCHES, layout="constrained")
    ax = fig.subplots()
    order = np.random.default_rng(seed).permutation(len(xy))  # no label systematically drawn on top
    colour_of = {int(c): colours[i] for i, c in enumerate(present)}
    ax.scatter(xy[order, 0], xy[order, 1], s=6, alpha=0.6, linewidths=0, c=[colour_of[int(c)] for c in lab[order]])
    ax.scatter(pxy[:, 0], pxy[:, 1], s=320, marker="*", c=colours, edgecolors="black", linewidths=1.2, zorder=3)
    handles = [
        Line2D([], [], ls="", marker="o", ms=6, color=colour_of[int(c)], label=model.label_names[c]) for c in present
    ]
    handles.append(
        Line2D([], [], ls="", marker="*", ms=14, markerfacecolor="white", markeredgecolor="black", label="prototype")
    )
    ax.legend(
        handles=handles,
        loc="center left",
        bbox_to_anchor=(1.01, 0.5),
        fontsize=8,
        frameon=False,
        ncols=1 if len(handles) <= 25 else 2,
    )
    space = "projected (contrastive space)" if projected else "label-level h"
    ax.set_title(title or f"{space}, {method.upper()}: {len(xy)} positive labels, {len(present)} classes", fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    return fig
