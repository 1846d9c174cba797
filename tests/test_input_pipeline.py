"""The pipelines' tensor tail (sadcl's `ToTensor` + in-place ``Normalize``) gives torchvision's values bit for bit,
with the same random draws, and never writes into its caller's array."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from sadcl.data.transforms import IMAGENET_MEAN, IMAGENET_STD, ToTensor, eval_transform, train_transform


def _jpeg(w: int, h: int, seed: int = 0) -> Image.Image:
    """A decoded JPEG (smooth gradient + noise) of size w x h, as training reads it."""
    rng = np.random.default_rng(seed)
    ramp = (
        np.linspace(0, 200, w, dtype=np.float32)[None, :, None] + np.linspace(0, 50, h, dtype=np.float32)[:, None, None]
    )
    pixels = np.clip(ramp + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _modes() -> list[Image.Image | np.ndarray]:
    rgb = _jpeg(37, 23)
    return [
        rgb,
        rgb.convert("L"),
        rgb.convert("1"),
        rgb.convert("RGBA"),
        Image.fromarray(np.arange(35, dtype=np.uint16).reshape(5, 7) * 1000),  # I;16
        rgb.convert("F"),
        _jpeg(1, 1),
        np.asarray(rgb).copy(),  # uint8 HWC array
        np.random.default_rng(1).random((6, 4)).astype(np.float32),  # float HW array
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_to_tensor_is_torchvisions_bit_for_bit(dtype):
    saved = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        for pic in _modes():
            ours, ref = ToTensor()(pic), T.ToTensor()(pic)
            what = getattr(pic, "mode", type(pic).__name__)
            assert ours.dtype == ref.dtype and ours.shape == ref.shape, what
            assert ours.is_contiguous() and torch.equal(ours, ref), what
    finally:
        torch.set_default_dtype(saved)


def test_tail_never_writes_into_the_callers_array():
    """torchvision's ToTensor returns a float HWC array that is a channel-last view of CHW memory as a view of
    it; the in-place Normalize after sadcl's ToTensor must not change the caller's array."""
    chw = np.random.default_rng(2).random((3, 5, 4)).astype(np.float32)
    pic = chw.transpose(1, 2, 0)  # H x W x C, its channel-first transpose is contiguous
    assert np.shares_memory(T.ToTensor()(pic).numpy(), pic)  # the case the copy is for
    kept = pic.copy()
    x = T.Compose(eval_transform(4).transforms[1:])(pic)
    assert np.array_equal(pic, kept)
    assert torch.equal(x, T.Normalize(IMAGENET_MEAN, IMAGENET_STD)(T.ToTensor()(kept)))


@pytest.mark.parametrize("recipe", ["sadcl", "baseline", "eval"])
def test_pipelines_identical_to_the_torchvision_tail(recipe):
    """Same seeds, same pixels, same random draws as the pipeline with torchvision's ToTensor + Normalize."""
    ours = eval_transform(64) if recipe == "eval" else train_transform(64, recipe=recipe)
    names = [type(t).__name__ for t in ours.transforms[-2:]]
    assert names == ["ToTensor", "Normalize"] and isinstance(ours.transforms[-2], T.ToTensor)
    reference = T.Compose([*ours.transforms[:-2], T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    for seed, (w, h) in enumerate([(80, 60), (60, 80), (50, 37)]):
        img = _jpeg(w, h, seed)
        out = {}
        for name, tf in (("ours", ours), ("reference", reference)):
            random.seed(seed)
            torch.manual_seed(seed)
            xs = [tf(img) for _ in range(6)]
            out[name] = (xs, random.random(), torch.rand(1).item())
        (xs, r, t), (ref_xs, ref_r, ref_t) = out["ours"], out["reference"]
        assert all(torch.equal(a, b) for a, b in zip(xs, ref_xs)) and (r, t) == (ref_r, ref_t)
