"""Inference: image loading and preprocessing from the model's metadata, per-label scores, attention maps."""
from __future__ import annotations

import os
from typing import Iterable, Sequence, Union

import numpy as np
import torch
from PIL import Image

from .data.images import load_image
from .model import SADCL

ImageInput = Union[str, os.PathLike, Image.Image]
Images = Union[ImageInput, Sequence[ImageInput], torch.Tensor]

_RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


def preprocess(image: ImageInput, pretrained_cfg: dict) -> torch.Tensor:
    """PIL/path → normalised ``[3, H, W]`` tensor, as the model was evaluated (squash resize, no crop)."""
    _, h, w = pretrained_cfg["input_size"]
    img = load_image(image)
    resample = _RESAMPLE[pretrained_cfg.get("interpolation", "bilinear")]
    if img.size != (w, h):
        img = img.resize((w, h), resample)
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)
    mean = torch.tensor(pretrained_cfg["mean"]).view(3, 1, 1)
    std = torch.tensor(pretrained_cfg["std"]).view(3, 1, 1)
    return (x - mean) / std


def _as_list(images: Images) -> list:
    if isinstance(images, (str, os.PathLike, Image.Image)):
        return [images]
    return list(images)


def _batches(model: SADCL, images: Images, batch_size: int, progress: bool) -> Iterable[torch.Tensor]:
    if isinstance(images, torch.Tensor):
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"a tensor input must be a preprocessed batch [B, 3, H, W], got {tuple(images.shape)}")
        for i in range(0, len(images), batch_size):
            yield images[i:i + batch_size]
        return
    items = _as_list(images)
    chunks = range(0, len(items), batch_size)
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc="predict", unit="batch")
    for i in chunks:
        yield torch.stack([preprocess(item, model.pretrained_cfg) for item in items[i:i + batch_size]])


def _device(model: SADCL, device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return next(model.parameters()).device


def _to_channels_last(model: SADCL) -> None:
    """Store the convolution weights channels_last (once; a no-op afterwards), matching the channels_last inputs.

    NHWC is the layout oneDNN (CPU) and cuDNN (tensor cores) run fastest, and a channels_last input with
    NCHW weights makes every convolution convert one of them (benchmarks/bench_inference.py).
    """
    if any(p.dim() == 4 and not p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters()):
        model.to(memory_format=torch.channels_last)


def _prepare(model: SADCL, device: str | torch.device | None, channels_last: bool) -> torch.device:
    """Move (and re-layout) the model outside inference mode: parameters created inside it could never be
    trained again ("Inference tensors cannot be saved for backward")."""
    dev = _device(model, device)
    with torch.no_grad():
        model.to(dev)
        if channels_last:
            _to_channels_last(model)
    return dev


def predict_scores(
    model: SADCL, images: Images, *, batch_size: int = 16, device: str | torch.device | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Sigmoid probabilities ``[N, C]`` (float32, CPU) for ``images``.

    Like ``model.to(device)``, this changes ``model`` in place: it is moved to ``device`` and its convolution
    weights are stored channels_last (same values, faster inference; training is unaffected).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dev = _prepare(model, device, channels_last=True)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            out = [
                torch.sigmoid(model(x.to(dev, non_blocking=True).contiguous(memory_format=torch.channels_last)))
                .float().cpu()
                for x in _batches(model, images, batch_size, progress)
            ]
    finally:
        model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, model.num_classes)


def predict(
    model: SADCL,
    images: Images,
    *,
    threshold: float | None = None,
    top_k: int | None = None,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> list[dict[str, float]]:
    """Per-label scores for each image, sorted by descending score.

    ``images``: a path, a PIL image, a list of them, or a preprocessed float tensor batch ``[B, 3, H, W]``.
    With ``threshold`` only labels scoring above it are kept; with ``top_k`` at most ``k`` labels; with neither,
    every label is returned. Scores are sigmoid probabilities.
    """
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    scores = predict_scores(model, images, batch_size=batch_size, device=device, progress=progress)
    names = model.label_names
    results = []
    for row in scores.tolist():
        ranked = sorted(zip(names, row), key=lambda t: -t[1])
        if threshold is not None:
            ranked = [(n, s) for n, s in ranked if s > threshold]
        if top_k is not None:
            ranked = ranked[:top_k]
        results.append(dict(ranked))
    return results


def attention_maps(
    model: SADCL, images: Images, *, batch_size: int = 16, device: str | torch.device | None = None
) -> torch.Tensor:
    """Category-related attention maps ``[B, C, H, W]``: for each label query, the last decoder layer's
    cross-attention over the feature grid, averaged over heads (each map sums to 1)."""
    dev = _prepare(model, device, channels_last=False)
    was_training = model.training
    model.eval()
    maps = []
    try:
        with torch.inference_mode():
            for x in _batches(model, images, batch_size, False):
                maps.append(model.forward_attention(x.to(dev))[1].float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(maps)
