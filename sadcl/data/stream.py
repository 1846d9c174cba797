"""A stream of images decoded for inference: loaded, resized to the model's size, delivered as uint8 batches.

Inference spends little on each image besides the network, but what it spends (open, decode, convert, resize)
runs once per image in Python. :func:`decoded_batches` takes that work out of the scoring loop:

* each batch is decoded by one worker process (``workers`` of them), while the main process scores the batch
  before it; ``workers=0`` decodes in the calling process, one batch at a time. By default workers run on
  the cores the model leaves free, and on a CPU whose cores all run the model only once decoding, not the
  model, is what the stream waits for (:func:`default_workers`, :func:`decoded_batches`);
* an image is resized to the model's size on the 8-bit PIL image, exactly as
  :func:`sadcl.create_transform` does, and delivered as ``uint8`` ``[B, H, W, 3]``: four times less to copy
  than float, and the float conversion and normalisation run once per batch (:func:`normalise`);
* the input is read lazily, at most ``prefetch`` batches ahead of the one being scored, so a generator of
  millions of paths streams through in flat memory;
* an unreadable image becomes a one-line message naming it (raised as the loader's own error type in the
  calling process, never a worker's traceback); the workers are ended when the stream is closed, exhausted or
  abandoned by an exception (``KeyboardInterrupt`` included: workers ignore SIGINT and are terminated by the
  main process).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import time
import warnings
from collections import deque
from collections.abc import Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from itertools import chain, islice

import numpy as np
import torch
from PIL import Image

from .images import ImageLoadError, load_image
from .transforms import _PIL_RESAMPLE

ImageInput = str | os.PathLike | Image.Image

MAX_DEFAULT_WORKERS = 4  # on a CPU (the model needs cores too)
MAX_ACCELERATOR_WORKERS = 16
# workers=None decodes an input of at most this many batches in place: starting and ending worker processes
# (a fork of a process holding torch and a model, then its exit) costs tens of milliseconds, which a few
# batches do not win back.
IN_PLACE_BATCHES = 4
ADAPT_AFTER_BATCHES = 3  # in-place batches timed before decoders may be started


def load_item(item: ImageInput) -> Image.Image:
    """An input as an upright 8-bit RGB image: a PIL image or file through ``load_image``; an ``http(s)://`` URL
    string fetched first (bounded in time and size, :mod:`sadcl.data.remote`); any other ``scheme://`` is
    refused."""
    from . import remote  # light: it imports requests only when a URL is fetched

    return remote.fetch_image(item) if remote.is_url(item) else load_image(item)


def decode(item: ImageInput, size: tuple[int, int], interpolation: str = "bilinear") -> np.ndarray:
    """``item`` loaded and squash-resized to ``size`` ``(h, w)``: ``uint8`` ``[h, w, 3]``.

    The resize is torchvision's ``Resize((h, w))`` on a PIL image (PIL's resampling, skipped when the image
    already has that size), so ``ToTensor`` + ``Normalize`` of the result is :func:`sadcl.create_transform`.
    """
    img = load_item(item)
    h, w = size
    if img.size != (w, h):
        img = img.resize((w, h), _PIL_RESAMPLE[interpolation])
    return np.asarray(img)


@dataclass
class DecodedBatch:
    """One batch of the stream: the input items, the pixels of those that loaded, and why the others did not."""

    items: list
    pixels: np.ndarray  # uint8 [k, H, W, 3]: the k items that loaded, in input order
    loaded: list[int]  # positions in ``items`` of the rows of ``pixels``
    failures: dict[int, ImageLoadError] = field(default_factory=dict)  # position in ``items`` -> its error


def _decode_chunk(items: Sequence[ImageInput], size: tuple[int, int], interpolation: str) -> tuple:
    """Decode a batch (in a worker): pixels, loaded positions, ``{position: ImageLoadError}`` and the warnings
    raised as ``(category, message)`` (a worker's own stderr is not where a caller looks)."""
    h, w = size
    pixels = np.empty((len(items), h, w, 3), np.uint8)  # filled in place: one copy per image
    loaded: list[int] = []
    failures: dict[int, ImageLoadError] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i, item in enumerate(items):
            try:
                pixels[len(loaded)] = decode(item, size, interpolation)
            except ImageLoadError as e:  # the loader's message names the file (or URL) and the reason
                failures[i] = e.with_traceback(None)  # pickled without its frames
                continue
            except Exception as e:  # anything else a decoder raises on this file is still this file's failure
                failures[i] = ImageLoadError(f"cannot load image {_name(item)}: {type(e).__name__}: {e}")
                continue
            loaded.append(i)
    return pixels[: len(loaded)], loaded, failures, [(w.category, str(w.message)) for w in caught]


def _as_batch(items: list, result: tuple) -> DecodedBatch:
    pixels, loaded, failures, caught = result
    for category, message in caught:  # the worker's warnings, raised where the caller can see them
        warnings.warn(message, category, stacklevel=3)
    return DecodedBatch(items, pixels, loaded, failures)


def _ignore_sigint() -> None:
    """Worker start-up: Ctrl-C reaches the whole process group; the main process alone handles it (and ends the
    workers), so no worker prints a traceback of its own."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_workers(device: str = "cpu") -> int:
    """Decoding processes started at once when ``workers=None`` and the input is more than
    ``IN_PLACE_BATCHES`` batches.

    On an accelerator (``device`` ``"cuda"``, ...) the cores only decode: all but one (the main process's), at
    most 16. On a CPU, the cores the model's threads (``torch.get_num_threads()``) leave free, at most 4: a
    decoder on a core the model uses slows the model down more than it saves (benchmarks/bench_predict_folder.py:
    on 2 cores the default model scored 0.86-0.93 of its tensor-only rate decoding in place, 0.82 with one
    worker, 0.68 with two). 0 (decode in place, see :func:`decoded_batches`) when none is free or in a
    daemonic process (a DataLoader worker), which cannot start processes.
    """
    if mp.current_process().daemon:
        return 0
    if device != "cpu":
        return max(1, min(MAX_ACCELERATOR_WORKERS, _cores() - 1))
    return max(0, min(MAX_DEFAULT_WORKERS, _cores() - torch.get_num_threads()))


def _workers_when_decoding_dominates() -> int:
    """Decoders once decoding in place takes longer than scoring: half the cores (at least 1, at most 4)."""
    return max(1, min(MAX_DEFAULT_WORKERS, _cores() // 2))


def _pool(workers: int) -> ProcessPoolExecutor:
    # fork (Linux): a worker imports nothing and starts in tens of milliseconds even from a process holding
    # torch and a model; it runs only Pillow and NumPy, never torch, so the parent's threads do not matter.
    # Elsewhere the platform's default start method.
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else None)
    return ProcessPoolExecutor(workers, mp_context=ctx, initializer=_ignore_sigint)


def _end(pool: ProcessPoolExecutor, pending: Iterable[Future]) -> None:
    """Cancel what has not started, end the workers now (not after their current batch) and reap them."""
    for fut in pending:
        fut.cancel()
    terminate = getattr(pool, "terminate_workers", None)  # Python >= 3.14
    if terminate is not None:
        terminate()
    else:
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            proc.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


def _name(item: object) -> str:
    return os.fspath(item) if isinstance(item, (str, os.PathLike)) else f"a {type(item).__name__}"


def _chunks(images: Iterable[object], batch_size: int) -> Iterator[list]:
    """``images`` in lists of ``batch_size``, read lazily, each item checked to be something loadable."""
    it = iter(images)
    index = 0
    while items := list(islice(it, batch_size)):
        for item in items:
            if not isinstance(item, (str, os.PathLike, Image.Image)):
                raise TypeError(
                    f"image {index}: expected a file path, an http(s) URL or a PIL image, got {type(item).__name__}"
                )
            index += 1
        yield items


def _portable(item: ImageInput) -> ImageInput:
    """What crosses to a worker: a path as ``str`` (any ``os.PathLike`` object pickles that way)."""
    return os.fspath(item) if isinstance(item, os.PathLike) else item


def decoded_batches(
    images: Iterable[ImageInput],
    size: tuple[int, int],
    interpolation: str = "bilinear",
    *,
    batch_size: int = 16,
    workers: int | None = None,
    prefetch: int | None = None,
    device: str = "cpu",
) -> Iterator[DecodedBatch]:
    """The batches of ``images``, decoded (:func:`decode`), in input order.

    ``workers``: decoding processes; 0: in this process, one batch at a time; ``None``: in this process when
    the input is at most ``IN_PLACE_BATCHES`` batches, else :func:`default_workers` for ``device`` (the type
    of the device the batches are for: ``"cpu"``, ``"cuda"``, ...); when that is 0 (a CPU whose cores all run
    the model), in this process until decoding a batch takes longer than the caller's work on one (large
    photos: decoding a 3 MP JPEG costs twenty times the default model's forward), then in half the cores,
    the model's threads (``torch.set_num_threads``) reduced to the rest until the stream ends.
    ``prefetch``: batches decoded or being decoded ahead of the one the caller holds (default ``workers + 1``:
    each worker has one queued); at most ``prefetch + 1`` batches of the input (``IN_PLACE_BATCHES + 1`` when
    ``workers`` is ``None`` and that is more) are read ahead. When reading the input fails, the batches
    before the failure are delivered first. Close the generator (or let it finish) to end the workers; a
    ``break`` or an exception in a ``for`` loop over it does so when it is released.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if workers is not None and workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if workers and mp.current_process().daemon:
        raise ValueError(
            f"workers={workers}: this is a daemonic process (e.g. a DataLoader worker), which cannot start "
            "processes; use workers=0"
        )
    chunks = _chunks(images, batch_size)
    adaptive = False
    if workers is None:
        head = list(islice(chunks, IN_PLACE_BATCHES + 1))
        chunks = chain(head, chunks)
        workers = default_workers(device) if len(head) > IN_PLACE_BATCHES else 0
        adaptive = workers == 0 and len(head) > IN_PLACE_BATCHES and not mp.current_process().daemon
    if workers == 0:
        if not (yield from _in_place(chunks, size, interpolation, adaptive)):
            return
        workers = _workers_when_decoding_dominates()
        # The decoders get cores of their own: on a core shared with the model's threads both slow down more
        # than the overlap wins (2 cores, 640x480 JPEGs, default model: 164 images/s in place with 2 threads,
        # 203 with 1 thread + 1 decoder). Restored when the stream ends.
        threads = torch.get_num_threads()
        torch.set_num_threads(max(1, threads - workers))
        try:
            yield from _in_workers(chunks, size, interpolation, workers, prefetch)
        finally:
            torch.set_num_threads(threads)
        return
    yield from _in_workers(chunks, size, interpolation, workers, prefetch)


def _in_place(
    chunks: Iterator[list], size: tuple[int, int], interpolation: str, adaptive: bool
) -> Generator[DecodedBatch, None, bool]:
    """Decode each batch when it is asked for. With ``adaptive``, stop (return True: go on in workers) once
    decoding has taken longer than the caller's work between batches (the model's): then the model waits
    for the decoder, and decoders on the other cores win more than they take from it. The first batch is not
    counted (the model's first forward warms up)."""
    decoding = scoring = 0.0
    for n, items in enumerate(chunks):
        t0 = time.perf_counter()
        batch = _as_batch(items, _decode_chunk(items, size, interpolation))
        t1 = time.perf_counter()
        yield batch
        if n >= 1:
            decoding += t1 - t0
            scoring += time.perf_counter() - t1
            if adaptive and n >= ADAPT_AFTER_BATCHES and decoding > scoring:
                return True
    return False


def _in_workers(
    chunks: Iterator[list], size: tuple[int, int], interpolation: str, workers: int, prefetch: int | None
) -> Iterator[DecodedBatch]:
    """Decode the batches in ``workers`` processes, at most ``prefetch`` ahead, delivered in order."""
    ahead = workers + 1 if prefetch is None else max(1, prefetch)
    pool = _pool(workers)
    pending: deque[tuple[list, Future]] = deque()
    input_error: Exception | None = None
    finished = False
    try:
        while True:
            while input_error is None and len(pending) < ahead:
                try:
                    items = next(chunks, None)
                except Exception as e:  # raised after the batches read before it are delivered
                    input_error = e
                    break
                if items is None:
                    break
                portable = [_portable(x) for x in items]
                pending.append((items, pool.submit(_decode_chunk, portable, size, interpolation)))
            if not pending:
                break
            items, fut = pending.popleft()
            try:
                result = fut.result()
            except BrokenProcessPool:
                raise ImageLoadError(
                    "a decoding worker process died (killed, out of memory, or a crash in an image decoder) "
                    f"while reading one of {len(items)} images starting with {_name(items[0])}; run with "
                    "workers=0 to find the file"
                ) from None
            yield _as_batch(items, result)
        finished = True
    finally:
        if finished:
            pool.shutdown(wait=True)
        else:
            _end(pool, (f for _, f in pending))
    if input_error is not None:
        raise input_error


def normalise(
    pixels: np.ndarray, mean: torch.Tensor, std: torch.Tensor, device: torch.device | None = None
) -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` → float ``[B, 3, H, W]`` on ``device`` (channels_last), ``(x / 255 - mean) / std``:
    ``ToTensor`` + ``Normalize`` of a batch, the same operations in the same order (bit-identical results).

    The uint8 pixels travel to the device (pinned first on CUDA, so the copy is asynchronous) and are converted
    there: a quarter of the bytes of float. ``mean`` and ``std``: float32 ``[3, 1, 1]`` on ``device``.
    """
    x = torch.from_numpy(pixels)
    if device is not None and device.type == "cuda":
        x = x.pin_memory()
    x = x.to(device or x.device, non_blocking=True).permute(0, 3, 1, 2)  # a view: NHWC memory is channels_last
    return x.float().div_(255).sub_(mean).div_(std)
