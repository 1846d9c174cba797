"""Inference: image loading and preprocessing from the model's metadata, per-label scores, attention maps.

Every way of scoring images goes through one path, :func:`_scored`: the images are decoded, resized and batched
by :func:`sadcl.data.stream.decoded_batches` (in worker processes for more than one batch), normalised once per
batch on the model's device, and scored batch by batch. :func:`iter_predict` streams the results,
:func:`predict` collects them, :func:`predict_scores` returns the probabilities.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator, Sequence, Sized
from itertools import islice
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from .data.preprocessing import create_transform, from_pretrained_cfg
from .data.stream import DecodedBatch, ImageInput, decoded_batches, load_item, normalise
from .model import SADCL

__all__ = [
    "ImageInput",
    "ImageSkippedWarning",
    "NonFiniteScoreWarning",
    "Prediction",
    "attention_maps",
    "iter_predict",
    "predict",
    "predict_scores",
    "preprocess",
]

Images = ImageInput | Iterable[ImageInput] | torch.Tensor


def preprocess(image: ImageInput, pretrained_cfg: dict) -> torch.Tensor:
    """PIL/path → normalised ``[3, H, W]`` tensor, as the model was evaluated (squash resize, no crop).

    The same steps as :func:`sadcl.create_transform` (one evaluation preprocessing in the package); for many
    images build that transform once instead.
    """
    return create_transform(pretrained_cfg)(load_item(image))


class ImageSkippedWarning(UserWarning):
    """``predict(..., skip_bad=True)`` skipped an unreadable image; its result is ``None``."""


class NonFiniteScoreWarning(RuntimeWarning):
    """Some scores are NaN: the model's weights or its preprocessing (e.g. a ``std`` of 0) are broken."""


class Prediction(NamedTuple):
    """The result for one input image of :func:`iter_predict`."""

    index: int  # position in the input (0-based)
    image: object  # the input item as given (path, PathLike, PIL image, URL; a row of a tensor input)
    scores: dict[str, float] | None  # label → probability, descending, threshold/top_k applied; None: skipped
    error: str | None  # why ``skip_bad`` skipped it (one line naming the image), else None


def _as_iterable(images: Images) -> Iterable:
    """One image or many; an iterable is never listed (a generator of millions of paths streams through)."""
    if isinstance(images, (str, os.PathLike, Image.Image)):
        return [images]
    return images


def _image_name(item: object, index: int) -> str:
    """How messages name input ``index``: its path (a URL without credentials), else its position."""
    from .data.remote import shown

    return shown(os.fspath(item)) if isinstance(item, (str, os.PathLike)) else f"image {index}"


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


def _model_batches(
    model: SADCL, images: Images, batch_size: int, dev: torch.device, workers: int | None, skip_bad: bool
) -> Iterator[tuple[DecodedBatch, torch.Tensor | None]]:
    """``(decoded batch, its model input on dev)`` pairs (input ``None`` when no image of the batch loaded).

    An unreadable image raises its :class:`~sadcl.data.images.ImageLoadError` here, before the batch is scored,
    unless ``skip_bad``: then it stays in ``batch.failures``.
    """
    if isinstance(images, torch.Tensor):
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"a tensor input must be a preprocessed batch [B, 3, H, W], got {tuple(images.shape)}")
        for i in range(0, len(images), batch_size):
            rows = images[i : i + batch_size]
            batch = DecodedBatch(list(rows), np.empty(0, np.uint8), list(range(len(rows))))
            yield batch, rows.to(dev, non_blocking=True).contiguous(memory_format=torch.channels_last)
        return
    pre = from_pretrained_cfg(model.pretrained_cfg)
    mean = torch.tensor(pre.mean, dtype=torch.float32, device=dev).view(3, 1, 1)
    std = torch.tensor(pre.std, dtype=torch.float32, device=dev).view(3, 1, 1)
    stream = decoded_batches(
        _as_iterable(images), pre.img_size, pre.interpolation, batch_size=batch_size, workers=workers, device=dev.type
    )
    try:
        for batch in stream:
            if batch.failures and not skip_bad:
                raise next(iter(batch.failures.values()))  # the first, in input order: one line naming the file
            if not batch.loaded:
                yield batch, None
                continue
            with torch.inference_mode():  # never held across the yield: it would reach the caller's code
                x = normalise(batch.pixels, mean, std, dev)
            yield batch, x
    finally:
        stream.close()  # ends the decoding workers now, also on break, exception or Ctrl-C


def _scored(
    model: SADCL,
    images: Images,
    batch_size: int,
    device: str | torch.device | None,
    workers: int | None,
    skip_bad: bool,
) -> Iterator[tuple[DecodedBatch, torch.Tensor]]:
    """``(decoded batch, probabilities [k, C] float32 CPU of its k loaded images)``, batch by batch.

    The model is in eval mode while the generator runs and back in its former mode when it ends or is closed;
    inference mode is on only around each forward, never while the caller holds a batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dev = _prepare(model, device, channels_last=True)
    was_training = model.training
    model.eval()
    batches = _model_batches(model, images, batch_size, dev, workers, skip_bad)
    try:
        for batch, x in batches:
            if x is None:
                yield batch, torch.empty(0, model.num_classes)
                continue
            with torch.inference_mode():
                probs = torch.sigmoid(model(x)).float().cpu()
            yield batch, probs
    finally:
        batches.close()
        model.train(was_training)


def _check_filters(threshold: float | None, top_k: int | None) -> None:
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if threshold is not None and not 0.0 <= threshold <= 1.0:  # NaN fails this too
        raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}")


def _ranked(names: list[str], row: list[float], threshold: float | None, top_k: int | None) -> dict[str, float]:
    # NaN last: `-s` alone compares NaN as neither smaller nor larger and would scramble the order.
    return selected(sorted(zip(names, row), key=lambda t: (t[1] != t[1], -t[1])), threshold, top_k)


def selected(ranked: Iterable[tuple[str, float]], threshold: float | None, top_k: int | None) -> dict[str, float]:
    """The labels ``threshold`` and ``top_k`` keep of ``(label, score)`` pairs ranked best first (NaN is never
    above a threshold)."""
    if threshold is not None:
        ranked = [(n, s) for n, s in ranked if s > threshold]
    return dict(islice(ranked, top_k))


def _predictions(
    batch: DecodedBatch, probs: torch.Tensor, start: int, names: list[str], threshold: float | None, top_k: int | None
) -> list[Prediction]:
    """One :class:`Prediction` per item of ``batch`` (``start``: the input index of its first item)."""
    rows = dict(zip(batch.loaded, probs.tolist()))
    out = []
    for i, item in enumerate(batch.items):
        if i in batch.failures:
            out.append(Prediction(start + i, item, None, " ".join(str(batch.failures[i]).splitlines())))
        else:
            out.append(Prediction(start + i, item, _ranked(names, rows[i], threshold, top_k), None))
    return out


def _non_finite(batch: DecodedBatch, probs: torch.Tensor, start: int) -> list[str]:
    """Names of the images of ``batch`` with a non-finite score."""
    ok = torch.isfinite(probs).all(1).tolist()
    return [_image_name(batch.items[i], start + i) for i, fine in zip(batch.loaded, ok) if not fine]


def iter_predict(
    model: SADCL,
    images: Iterable[ImageInput] | torch.Tensor,
    *,
    threshold: float | None = None,
    top_k: int | None = None,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    workers: int | None = None,
    skip_bad: bool = False,
) -> Iterator[list[Prediction]]:
    """Per-label scores, streamed: one list of :class:`Prediction` per batch, in input order, as soon as the
    batch is scored.

    ``images``: an iterable of paths, ``http(s)://`` URLs and PIL images (read lazily: a generator of millions
    of paths streams through in flat memory, at most ``max(workers + 2, 5)`` batches read ahead), one such
    item, or a preprocessed float tensor ``[B, 3, H, W]``. ``threshold``, ``top_k``: as for :func:`predict`.

    ``workers``: processes decoding and resizing images while the model scores the batch before. ``None``
    (default): inputs of at most 4 batches are decoded in this process; longer ones on a GPU in all cores but
    one (at most 16), on a CPU in the cores the model's threads leave free (at most 4) and, when the model uses
    every core, in this process until decoding a batch takes longer than scoring it (large photos), then in
    half the cores, the model's threads reduced to the others until the iterator ends
    (:func:`sadcl.data.stream.decoded_batches`). ``0``: always in this process. The workers end when the
    iterator is exhausted, closed or released (``break``, exception, Ctrl-C).

    An unreadable image raises :class:`~sadcl.data.images.ImageLoadError` naming it (in this process, one
    line), after the batches before its own were yielded; with ``skip_bad=True`` its prediction has
    ``scores=None`` and ``error`` saying why, and no warning is issued (the error travels with the result).
    A :class:`NonFiniteScoreWarning` names the images of the first batch holding NaN scores (kept, sorted last;
    later batches are not reported again). Arguments are checked at the call, not at the first batch.
    Like ``model.to(device)``, this moves ``model`` to ``device`` and stores its convolution weights
    channels_last; the model is in eval mode until the iterator ends.
    """
    _check_filters(threshold, top_k)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if workers is not None and workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    return _iter_predict(model, images, threshold, top_k, batch_size, device, workers, skip_bad)


def _iter_predict(
    model: SADCL,
    images: Images,
    threshold: float | None,
    top_k: int | None,
    batch_size: int,
    device: str | torch.device | None,
    workers: int | None,
    skip_bad: bool,
) -> Iterator[list[Prediction]]:
    names = model.label_names
    start = 0
    warned = False
    scored = _scored(model, images, batch_size, device, workers, skip_bad)
    try:
        for batch, probs in scored:
            bad = [] if warned else _non_finite(batch, probs, start)
            if bad:
                warned = True
                _warn_non_finite(bad, len(batch.loaded), "of a batch (later batches are not reported)")
            yield _predictions(batch, probs, start, names, threshold, top_k)
            start += len(batch.items)
    finally:
        scored.close()


def predict_scores(
    model: SADCL,
    images: Images,
    *,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    progress: bool = False,
    workers: int | None = None,
) -> torch.Tensor:
    """Sigmoid probabilities ``[N, C]`` (float32, CPU) for ``images`` (``workers``: as for
    :func:`iter_predict`).

    Like ``model.to(device)``, this changes ``model`` in place: it is moved to ``device`` and its convolution
    weights are stored channels_last (same values, faster inference; training is unaffected).
    """
    scored = _scored(model, images, batch_size, device, workers, False)
    out = [probs for _, probs in _with_progress(scored, progress, images)]
    return torch.cat(out) if out else torch.empty(0, model.num_classes)


def _with_progress(scored: Iterator[tuple[DecodedBatch, torch.Tensor]], progress: bool, images: Images):
    """``scored`` with a tqdm bar counting images when ``progress`` (with a total when ``images`` has a length)."""
    if not progress:
        yield from scored
        return
    from tqdm.auto import tqdm

    items = _as_iterable(images)
    total = len(items) if isinstance(items, Sized) else None
    with tqdm(desc="predict", unit="image", total=total) as bar:
        for batch, probs in scored:
            bar.update(len(batch.items))
            yield batch, probs


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
    workers: int | None = None,
) -> list[dict[str, float] | None]:
    """Per-label scores for each image, sorted by descending score.

    ``images``: a path, an ``http(s)://`` URL (fetched with a deadline and a 50 MiB limit, see
    :mod:`sadcl.data.remote`), a PIL image, any iterable of them (a list, a generator), or a preprocessed float
    tensor batch ``[B, 3, H, W]``. With ``threshold`` only labels scoring above it are kept; with ``top_k`` at
    most ``k`` labels; with neither, every label is returned. Scores are sigmoid probabilities. ``workers``:
    decoding processes, as for :func:`iter_predict` (which this collects; use that to stream).

    An unreadable image (or a URL that cannot be fetched: :class:`~sadcl.data.remote.RemoteImageError`, a
    subclass) raises :class:`~sadcl.data.images.ImageLoadError` naming it; with ``skip_bad=True`` its
    result is ``None`` instead (the list keeps one entry per input, in order) and an
    :class:`ImageSkippedWarning` names it and the reason. NaN scores (broken weights or preprocessing) are
    kept as NaN, sorted last, and reported once by a :class:`NonFiniteScoreWarning` naming the images.
    """
    _check_filters(threshold, top_k)
    names = model.label_names
    results: list[dict[str, float] | None] = []
    bad: list[str] = []
    scored_count = 0
    scored = _scored(model, images, batch_size, device, workers, skip_bad)
    for batch, probs in _with_progress(scored, progress, images):
        start = len(results)
        for p in _predictions(batch, probs, start, names, threshold, top_k):
            if p.error is not None:
                warnings.warn(f"skipped: {p.error}", ImageSkippedWarning, stacklevel=2)
            results.append(p.scores)
        bad += _non_finite(batch, probs, start)
        scored_count += len(batch.loaded)
    if bad:
        _warn_non_finite(bad, scored_count)
    return results


def non_finite_message(shown: Sequence[str], count: int, total: int, where: str = "") -> str:
    """The report of NaN scores: ``count`` of ``total`` images, the first of them (``shown``) named."""
    more = f" and {count - len(shown)} more" if count > len(shown) else ""
    return (
        f"NaN scores for {count} of {total} images {where}({', '.join(shown)}{more}): the model's weights or its "
        "preprocessing (mean/std) are broken"
    )


def _warn_non_finite(bad: list[str], total: int, where: str = "", shown: int = 5) -> None:
    """One :class:`NonFiniteScoreWarning` naming the images with a non-finite score."""
    warnings.warn(
        non_finite_message(bad[:shown], len(bad), total, where),
        NonFiniteScoreWarning,
        stacklevel=3,  # the caller of predict, or the loop over iter_predict
    )


def attention_maps(
    model: SADCL,
    images: Images,
    *,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    workers: int | None = None,
) -> torch.Tensor:
    """Category-related attention maps ``[B, C, H, W]``: for each label query, the last decoder layer's
    cross-attention over the feature grid, averaged over heads (each map sums to 1)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dev = _prepare(model, device, channels_last=False)
    was_training = model.training
    model.eval()
    maps = []
    batches = _model_batches(model, images, batch_size, dev, workers, skip_bad=False)
    try:
        for _, x in batches:
            with torch.inference_mode():
                maps.append(model.forward_attention(x.contiguous())[1].float().cpu())
    finally:
        batches.close()
        model.train(was_training)
    return torch.cat(maps)
