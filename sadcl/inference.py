"""Inference: image loading and preprocessing from the model's metadata, per-label scores, attention maps."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence

import torch
from PIL import Image

from .data.images import ImageLoadError, load_image
from .data.preprocessing import create_transform
from .model import SADCL

ImageInput = str | os.PathLike | Image.Image
Images = ImageInput | Sequence[ImageInput] | torch.Tensor


def preprocess(image: ImageInput, pretrained_cfg: dict) -> torch.Tensor:
    """PIL/path → normalised ``[3, H, W]`` tensor, as the model was evaluated (squash resize, no crop).

    The same steps as :func:`sadcl.create_transform` (one evaluation preprocessing in the package); for many
    images build that transform once instead.
    """
    return create_transform(pretrained_cfg)(_load(image))


def _load(item: ImageInput) -> Image.Image:
    """An input as an RGB image: a PIL image or file through ``load_image``; an ``http(s)://`` URL string fetched
    first (bounded in time and size, :mod:`sadcl.data.remote`); any other ``scheme://`` is refused."""
    from .data import remote  # light: it imports requests only when a URL is fetched

    return remote.fetch_image(item) if remote.is_url(item) else load_image(item)


class ImageSkippedWarning(UserWarning):
    """``predict(..., skip_bad=True)`` skipped an unreadable image; its result is ``None``."""


class NonFiniteScoreWarning(RuntimeWarning):
    """Some scores are NaN: the model's weights or its preprocessing (e.g. a ``std`` of 0) are broken."""


def _as_list(images: Images) -> list:
    if isinstance(images, (str, os.PathLike, Image.Image)):
        return [images]
    return list(images)


def _image_name(item: object, index: int) -> str:
    """How messages name input ``index``: its path, else its position."""
    return os.fspath(item) if isinstance(item, (str, os.PathLike)) else f"image {index}"


def _batches(
    model: SADCL, images: Images, batch_size: int, progress: bool, skip_bad: bool = False
) -> Iterable[tuple[list[int], torch.Tensor]]:
    """``(input indices, preprocessed batch)`` pairs; with ``skip_bad`` an unreadable image is left out of its
    batch (an :class:`ImageSkippedWarning` names it) instead of stopping everything."""
    if isinstance(images, torch.Tensor):
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"a tensor input must be a preprocessed batch [B, 3, H, W], got {tuple(images.shape)}")
        for i in range(0, len(images), batch_size):
            yield list(range(i, min(i + batch_size, len(images)))), images[i : i + batch_size]
        return
    items = _as_list(images)
    chunks = range(0, len(items), batch_size)
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc="predict", unit="batch")
    transform = create_transform(model)  # built once: the model's evaluation preprocessing
    for i in chunks:
        indices, tensors = [], []
        for j, item in enumerate(items[i : i + batch_size], start=i):
            try:
                tensors.append(transform(_load(item)))
            except ImageLoadError as e:  # the loader's message names the file (or URL) and the reason
                if not skip_bad:
                    raise
                warnings.warn(f"skipped: {e}", ImageSkippedWarning, stacklevel=4)
                continue
            indices.append(j)
        if tensors:
            yield indices, torch.stack(tensors)


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
    model: SADCL,
    images: Images,
    *,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Sigmoid probabilities ``[N, C]`` (float32, CPU) for ``images``.

    Like ``model.to(device)``, this changes ``model`` in place: it is moved to ``device`` and its convolution
    weights are stored channels_last (same values, faster inference; training is unaffected).
    """
    return _scores(model, images, batch_size, device, progress, skip_bad=False)[0]


def _scores(
    model: SADCL, images: Images, batch_size: int, device: str | torch.device | None, progress: bool, skip_bad: bool
) -> tuple[torch.Tensor, list[int]]:
    """Probabilities ``[K, C]`` of the ``K`` images that loaded, and their input indices."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dev = _prepare(model, device, channels_last=True)
    was_training = model.training
    model.eval()
    kept: list[int] = []
    out = []
    try:
        with torch.inference_mode():
            for indices, x in _batches(model, images, batch_size, progress, skip_bad):
                x = x.to(dev, non_blocking=True).contiguous(memory_format=torch.channels_last)
                out.append(torch.sigmoid(model(x)).float().cpu())
                kept.extend(indices)
    finally:
        model.train(was_training)
    return (torch.cat(out) if out else torch.empty(0, model.num_classes)), kept


def predict(
    model: SADCL,
    images: Images,
    *,
    threshold: float | None = None,
    top_k: int | None = None,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    progress: bool = False,
    skip_bad: bool = False,
) -> list[dict[str, float] | None]:
    """Per-label scores for each image, sorted by descending score.

    ``images``: a path, an ``http(s)://`` URL (fetched with a deadline and a 50 MiB limit, see
    :mod:`sadcl.data.remote`), a PIL image, a list of them, or a preprocessed float tensor batch ``[B, 3, H, W]``.
    With ``threshold`` only labels scoring above it are kept; with ``top_k`` at most ``k`` labels; with neither,
    every label is returned. Scores are sigmoid probabilities.

    An unreadable image (or a URL that cannot be fetched: :class:`~sadcl.data.remote.RemoteImageError`, a
    subclass) raises :class:`~sadcl.data.images.ImageLoadError` naming it; with ``skip_bad=True`` its
    result is ``None`` instead (the list keeps one entry per input, in order) and an
    :class:`ImageSkippedWarning` names it and the reason. NaN scores (broken weights or preprocessing) are
    kept as NaN, sorted last, and reported once by a :class:`NonFiniteScoreWarning` naming the images.
    """
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if threshold is not None and not 0.0 <= threshold <= 1.0:  # NaN fails this too
        raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}")
    scores, kept = _scores(model, images, batch_size, device, progress, skip_bad)
    items = images if isinstance(images, torch.Tensor) else _as_list(images)
    _warn_non_finite(scores, [_image_name(items[j], j) for j in kept])
    names = model.label_names
    results: list[dict[str, float] | None] = [None] * len(items)
    for j, row in zip(kept, scores.tolist()):
        # NaN last: `-s` alone compares NaN as neither smaller nor larger and would scramble the order.
        ranked = sorted(zip(names, row), key=lambda t: (t[1] != t[1], -t[1]))
        if threshold is not None:
            ranked = [(n, s) for n, s in ranked if s > threshold]
        if top_k is not None:
            ranked = ranked[:top_k]
        results[j] = dict(ranked)
    return results


def _warn_non_finite(scores: torch.Tensor, names: list[str], shown: int = 5) -> None:
    """One :class:`NonFiniteScoreWarning` naming the images (rows of ``scores``) with a non-finite score."""
    bad = [name for name, ok in zip(names, torch.isfinite(scores).all(1).tolist()) if not ok]
    if bad:
        listed = ", ".join(bad[:shown]) + (f" and {len(bad) - shown} more" if len(bad) > shown else "")
        warnings.warn(
            f"NaN scores for {len(bad)} of {len(names)} images ({listed}): the model's weights or its "
            "preprocessing (mean/std) are broken",
            NonFiniteScoreWarning,
            stacklevel=3,
        )


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
            for _, x in _batches(model, images, batch_size, False):
                maps.append(model.forward_attention(x.to(dev))[1].float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(maps)
