"""sadcl.iter_predict: streamed, lazy, ordered scoring with decoding workers; the same numbers as predict."""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sadcl
from sadcl.data import stream
from sadcl.data.images import ImageLoadError, load_image
from sadcl.data.mosaic import make_mosaics, mosaic_to_pil
from sadcl.inference import NonFiniteScoreWarning, Prediction, iter_predict, predict_scores

# (width, height, mode, format): odd sizes around and far from 56 px, every mode load_image converts
KINDS = [
    (56, 56, "RGB", "PNG"),
    (57, 203, "L", "PNG"),
    (400, 131, "P", "PNG"),
    (73, 61, "RGBA", "PNG"),
    (56, 56, "RGB", "JPEG"),
    (299, 388, "RGB", "JPEG"),
    (41, 90, "L", "JPEG"),
]


@pytest.fixture(scope="module")
def model():
    return sadcl.create_model("sadcl_fashion_mosaic", pretrained=True).eval()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> list[Path]:
    """Fashion mosaics written at mixed sizes, modes and formats (14 images)."""
    root = tmp_path_factory.mktemp("mosaics")
    images, _, _ = make_mosaics("test", 2 * len(KINDS), seed=3)
    paths = []
    for i, arr in enumerate(images):
        w, h, mode, fmt = KINDS[i % len(KINDS)]
        img = mosaic_to_pil(arr).resize((w, h), Image.Resampling.BICUBIC)
        if mode == "RGBA":
            img = img.convert("RGBA")
            img.putalpha(Image.fromarray(np.linspace(0, 255, w * h, dtype=np.uint8).reshape(h, w)))
        else:
            img = img.convert(mode)
        path = root / f"m{i:02d}.{'png' if fmt == 'PNG' else 'jpg'}"
        img.save(path, fmt)
        paths.append(path)
    return paths


def children() -> set[int]:
    """This process's child processes (Linux /proc)."""
    kids: set[int] = set()
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            kids |= {int(p) for p in (task / "children").read_text().split()}
        except FileNotFoundError:  # a thread that ended since the listing (a pool's manager thread)
            continue
    return kids


def flat(batches) -> list[Prediction]:
    return [p for batch in batches for p in batch]


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_batch_pixels_match_create_transform(folder, interpolation):
    cfg = {"input_size": (3, 56, 48), "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    cfg["interpolation"] = interpolation
    transform = sadcl.create_transform(cfg)
    mean, std = (torch.tensor(cfg[k]).view(3, 1, 1) for k in ("mean", "std"))
    (batch,) = stream.decoded_batches(folder, (56, 48), interpolation, batch_size=len(folder), workers=0)
    got = stream.normalise(batch.pixels, mean, std)
    expected = torch.stack([transform(load_image(p)) for p in folder])
    assert got.shape == expected.shape == (len(folder), 3, 56, 48)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert (got - expected).abs().max() <= 1e-5


def test_ordered_and_equal_to_predict_with_workers(model, folder):
    paths = [str(p) for p in folder]
    batches = list(iter_predict(model, iter(paths), batch_size=3, workers=2, top_k=4))
    assert [len(b) for b in batches] == [3, 3, 3, 3, 2]
    preds = flat(batches)
    assert [p.index for p in preds] == list(range(len(paths))) and [p.image for p in preds] == paths
    assert all(p.error is None and len(p.scores) == 4 for p in preds)
    in_process = sadcl.predict(model, folder, workers=0)
    probs = predict_scores(model, folder, batch_size=5, workers=2)
    for p, ref, row in zip(preds, in_process, probs.tolist()):
        assert list(p.scores) == list(ref)[:4]
        assert p.scores == pytest.approx({k: ref[k] for k in p.scores}, abs=1e-5)
        assert [ref[n] for n in model.label_names] == pytest.approx(row, abs=1e-5)
    transform = sadcl.create_transform(model)
    x = torch.stack([transform(load_image(p)) for p in folder])
    with torch.no_grad():
        direct = torch.sigmoid(model(x))
    assert probs == pytest.approx(direct, abs=1e-5)


def test_generator_is_read_lazily_and_its_error_comes_after_earlier_batches(model, folder):
    pulled = []

    def paths():
        for p in folder[:6]:
            pulled.append(p)
            yield p
        raise RuntimeError("the listing failed")

    it = iter_predict(model, paths(), batch_size=2, workers=1)
    assert pulled == []  # nothing read at the call
    first = next(it)
    assert [p.index for p in first] == [0, 1]
    assert len(pulled) <= 2 * 3  # workers + 2 batches at most: bounded read-ahead
    assert [p.index for p in next(it)] == [2, 3]
    assert [p.index for p in next(it)] == [4, 5]  # every batch read before the failure is delivered
    with pytest.raises(RuntimeError, match="the listing failed"):
        next(it)


def test_predict_takes_a_generator(model, folder):
    assert sadcl.predict(model, (p for p in folder[:5]), top_k=2, batch_size=2) == sadcl.predict(
        model, folder[:5], top_k=2, batch_size=2, workers=0
    )


def test_skip_bad_in_a_worker_names_the_file(model, folder, tmp_path):
    before = children()  # processes earlier tests may still hold are not this test's
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    paths = [*folder[:3], bad, folder[3]]
    preds = flat(iter_predict(model, paths, batch_size=2, workers=2, skip_bad=True))
    assert [p.index for p in preds] == [0, 1, 2, 3, 4] and preds[3].image == bad
    assert preds[3].scores is None and "broken.png" in preds[3].error and "\n" not in preds[3].error
    assert all(p.scores is not None and p.error is None for i, p in enumerate(preds) if i != 3)

    it = iter_predict(model, paths, batch_size=2, workers=2)
    assert [p.index for p in next(it)] == [0, 1]  # the batch before the bad one is delivered
    with pytest.raises(ImageLoadError, match="broken.png") as info:
        next(it)
    assert len(str(info.value).splitlines()) == 1 and "Traceback" not in str(info.value)
    assert children() == before


def test_breaking_out_or_failing_ends_the_workers(model, folder, monkeypatch):
    # The default for > 4 batches depends on the cores the model's threads leave free: pinned to one worker here.
    monkeypatch.setattr(stream, "default_workers", lambda device="cpu": 1)
    before = children()
    for _batch in iter_predict(model, folder[:8], batch_size=2):  # 4 batches: decoded in place by default
        assert children() == before
    for _batch in iter_predict(model, folder[:9], batch_size=2):  # 5: worker processes
        assert children() - before
        break
    assert children() == before
    for _batch in iter_predict(model, folder * 3, batch_size=2, workers=2):
        assert children() - before  # the workers run while the loop holds a batch
        break
    assert children() == before
    with pytest.raises(KeyboardInterrupt):
        for _batch in iter_predict(model, folder * 3, batch_size=2, workers=2):
            raise KeyboardInterrupt
    assert children() == before


def test_a_dead_worker_is_one_error_naming_its_batch(model, folder, monkeypatch):
    decode = stream.decode

    def crash_on_third(item, size, interpolation):
        if str(item).endswith("m02.png"):
            os._exit(1)  # a decoder crash takes the worker down (fork: the worker runs this patched function)
        return decode(item, size, interpolation)

    monkeypatch.setattr(stream, "decode", crash_on_third)
    before = children()
    with pytest.raises(ImageLoadError, match=r"worker process died .*m02\.png.*workers=0"):
        sadcl.predict(model, folder[:6], batch_size=1, workers=1)
    assert children() == before


def test_any_decoder_exception_is_that_files_failure(model, folder, monkeypatch):
    decode = stream.decode

    def buggy_on_second(item, size, interpolation):
        if str(item).endswith("m01.png"):
            raise ZeroDivisionError("a plugin bug")
        return decode(item, size, interpolation)

    monkeypatch.setattr(stream, "decode", buggy_on_second)
    preds = flat(iter_predict(model, folder[:12], batch_size=2, workers=1, skip_bad=True))
    assert preds[1].error == f"cannot load image {folder[1]}: ZeroDivisionError: a plugin bug"
    assert [p.index for p in preds if p.scores is None] == [1]


def test_tensor_input_and_arguments_checked_at_the_call(model):
    x = torch.randn(5, 3, 56, 56)
    preds = flat(iter_predict(model, x, batch_size=2))
    assert [p.index for p in preds] == [0, 1, 2, 3, 4] and torch.equal(preds[4].image, x[4])
    assert [p.scores for p in preds] == sadcl.predict(model, x, batch_size=2)
    for bad in ({"top_k": 0}, {"threshold": 2.0}, {"batch_size": 0}, {"workers": -1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            iter_predict(model, x, **bad)  # raised here, not at the first next()
    with pytest.raises(TypeError, match="image 2: expected a file path"):
        list(iter_predict(model, ["a.png", "b.png", 3], workers=0))


def test_nan_warned_once_per_stream(model, nan_logits):
    nan_logits(0)  # every batch's first image
    images = [Image.new("RGB", (30, 40), (i * 40, 0, 0)) for i in range(4)]
    with pytest.warns(NonFiniteScoreWarning, match=r"NaN scores for 1 of 2 images .*\(image 0\)") as caught:
        preds = flat(iter_predict(model, images, batch_size=2, workers=0))
    assert len([w for w in caught if w.category is NonFiniteScoreWarning]) == 1
    assert all(math.isnan(s) for s in preds[2].scores.values())  # kept, not warned again


@pytest.mark.parametrize(
    ("cores", "threads", "cpu", "cuda"), [(1, 1, 0, 1), (2, 2, 0, 1), (2, 1, 1, 1), (8, 4, 4, 7), (64, 8, 4, 16)]
)
def test_default_workers_by_device(monkeypatch, cores, threads, cpu, cuda):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    assert (stream.default_workers("cpu"), stream.default_workers("cuda")) == (cpu, cuda)


@pytest.mark.parametrize("decoding_dominates", [True, False])
def test_in_place_decoding_hands_over_to_workers_when_it_is_the_bottleneck(folder, monkeypatch, decoding_dominates):
    """A CPU whose cores all run the model (2 cores, 2 threads): decoded in place while the caller's work takes
    longer than decoding; once decoding takes longer, a worker process takes over (the order stays) and the
    model's threads leave it a core."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    threads = [2]
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads[-1])
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    decode = stream.decode

    def slow(item, size, interpolation):
        time.sleep(0.03 if decoding_dominates else 0)
        return decode(item, size, interpolation)

    monkeypatch.setattr(stream, "decode", slow)
    before, seen, order = children(), [], []
    for batch in stream.decoded_batches(folder[:10], (56, 56), batch_size=1):
        seen.append((bool(children() - before), threads[-1]))
        order += batch.items
        time.sleep(0 if decoding_dominates else 0.03)  # the caller's work (the model)
    assert order == folder[:10] and children() == before
    # with workers, the model's threads leave them a core; restored at the end
    assert seen == ([(False, 2)] * 4 + [(True, 1)] * 6 if decoding_dominates else [(False, 2)] * 10)
    assert threads[-1] == 2


def _in_a_daemon(conn, folder):
    images = [Image.open(p) for p in folder[:5]]
    try:
        batches = list(stream.decoded_batches(images, (56, 56), batch_size=2))  # default: no worker processes
        try:
            next(stream.decoded_batches(images, (56, 56), batch_size=2, workers=2))
            conn.send("workers=2 ran")
        except ValueError as e:
            conn.send(([len(b.loaded) for b in batches], str(e)))
    except BaseException as e:
        conn.send(f"{type(e).__name__}: {e}")


def test_a_daemonic_process_decodes_in_place(folder):
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_in_a_daemon, args=(child, folder), daemon=True)
    proc.start()
    assert parent.poll(20)
    got = parent.recv()
    proc.join(5)
    assert got[0] == [2, 2, 1] and "daemonic process" in got[1] and "workers=0" in got[1], got


def test_predict_progress_counts_images(model, folder, capsys):
    sadcl.predict(model, folder[:5], batch_size=2, progress=True)
    assert "5/5" in capsys.readouterr().err  # a list has a length: the bar has a total
    sadcl.predict(model, iter(folder[:5]), batch_size=2, progress=True)
    err = capsys.readouterr().err
    assert "5image" in err.replace(" ", "") and "/5" not in err  # a generator has none: a count only
