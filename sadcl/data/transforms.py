"""The recipe's image transforms (REFERENCE d.2, d.3).

* `eval_transform`: Resize((s, s)) -> ToTensor -> Normalize, the authors' evaluation.
* `train_transform(recipe="sadcl")`: SADCL step 2, Resize((s*512/448,)*2) -> `MultiScaleCrop` ->
  horizontal flip -> ToTensor -> Normalize.
* `train_transform(recipe="baseline")`: the Query2Label step 1, Resize((s, s)) -> `CutoutPIL` ->
  `RandAugment` -> ToTensor -> Normalize.

All randomness comes from Python's `random` (and torch's RNG for the flip); PyTorch's DataLoader seeds both
in each worker, so a seeded run reproduces its augmentations.

The tail of every pipeline is this module's `ToTensor` (torchvision's, converting an 8-bit image in one pass)
and ``Normalize`` working in place: the same float32 values bit for bit, in about a third of the time at 448 px
(``benchmarks/bench_input_pipeline.py``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RANDAUGMENT_OPS",
    "MultiScaleCrop",
    "CutoutPIL",
    "RandAugment",
    "ToTensor",
    "eval_transform",
    "train_transform",
]

from .preprocessing import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402 (one home for the constants)

_PIL_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def _interpolation(name: str) -> InterpolationMode:
    if name not in _PIL_RESAMPLE:
        raise ValueError(f"interpolation must be one of {sorted(_PIL_RESAMPLE)}, got {name!r}")
    return InterpolationMode(name)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    """An int side or an (h, w) pair (torchvision's convention) -> (h, w)."""
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


# ----------------------------------------------------------------------------- MultiScaleCrop


class MultiScaleCrop:
    """Multi-scale crop of the SADCL recipe (TSN-style corner cropping, REFERENCE d.3).

    For an image of size W x H with base side ``min(W, H)``, the candidate crop sides are
    ``int(base * s)`` for each scale ``s``; a side within 3 px of the output side snaps to it (512 * 0.875
    -> 448 at the recipe's resolution). A (crop_w, crop_h) pair is drawn uniformly among the index pairs
    (i, j) with ``|i - j| <= max_distort``, so the aspect ratio is distorted by at most that many scale
    steps. With ``fix_crop`` the top-left corner is one of 13 fixed positions on a grid of step
    ``((W - crop_w) // 4, (H - crop_h) // 4)``: the 4 corners, the centre, the 4 edge centres and the 4
    quarter points; otherwise it is uniform. The crop is resized to ``size`` (bilinear).

    Args:
        size: output side, or (h, w).
        scales: crop sides relative to the image's shorter side, each in (0, 1].
        max_distort: largest allowed |i - j| between the width and height scale indices.
        fix_crop: use the 13 fixed offsets (the recipe) instead of uniform offsets.
        interpolation: resampling of the crop to ``size``.
    """

    SNAP_PX = 3  # sides closer than this to the output side are snapped to it

    def __init__(
        self,
        size: int | Sequence[int],
        scales: Sequence[float] = (1.0, 0.875, 0.75, 0.66, 0.5),
        max_distort: int = 2,
        fix_crop: bool = True,
        interpolation: str = "bilinear",
    ) -> None:
        self.size = _pair(size)
        if not scales or any(not 0.0 < s <= 1.0 for s in scales):
            raise ValueError(f"scales must be a non-empty list of values in (0, 1], got {list(scales)}")
        if max_distort < 0:
            raise ValueError(f"max_distort must be >= 0, got {max_distort}")
        _interpolation(interpolation)
        self.scales = tuple(float(s) for s in scales)
        self.max_distort = int(max_distort)
        self.fix_crop = bool(fix_crop)
        self.interpolation = interpolation

    def crop_sizes(self, width: int, height: int) -> list[tuple[int, int]]:
        """Allowed (crop_w, crop_h) pairs for an image of this size."""
        base = min(width, height)
        sides = [int(base * s) for s in self.scales]
        out_h, out_w = self.size
        crop_h = [out_h if abs(x - out_h) < self.SNAP_PX else x for x in sides]
        crop_w = [out_w if abs(x - out_w) < self.SNAP_PX else x for x in sides]
        # a snapped side can exceed a small image; never crop outside it
        crop_h = [min(h, height) for h in crop_h]
        crop_w = [min(w, width) for w in crop_w]
        return [(w, h) for i, h in enumerate(crop_h) for j, w in enumerate(crop_w) if abs(i - j) <= self.max_distort]

    @staticmethod
    def fixed_offsets(width: int, height: int, crop_w: int, crop_h: int) -> list[tuple[int, int]]:
        """The 13 fixed (left, top) positions of a crop_w x crop_h crop."""
        sw, sh = (width - crop_w) // 4, (height - crop_h) // 4
        grid = [
            (0, 0),
            (4, 0),
            (0, 4),
            (4, 4),
            (2, 2),  # corners and centre
            (0, 2),
            (4, 2),
            (2, 4),
            (2, 0),  # edge centres: left, right, bottom, top
            (1, 1),
            (3, 1),
            (1, 3),
            (3, 3),  # quarter points
        ]
        return [(gx * sw, gy * sh) for gx, gy in grid]

    def get_params(self, width: int, height: int) -> tuple[int, int, int, int]:
        """Draw (left, top, crop_w, crop_h) for an image of this size."""
        crop_w, crop_h = random.choice(self.crop_sizes(width, height))
        if self.fix_crop:
            left, top = random.choice(self.fixed_offsets(width, height, crop_w, crop_h))
        else:
            left, top = random.randint(0, width - crop_w), random.randint(0, height - crop_h)
        return left, top, crop_w, crop_h

    def __call__(self, img: Image.Image) -> Image.Image:
        left, top, cw, ch = self.get_params(*img.size)
        crop = img.crop((left, top, left + cw, top + ch))
        out_h, out_w = self.size
        return crop.resize((out_w, out_h), _PIL_RESAMPLE[self.interpolation])

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(size={self.size}, scales={self.scales}, max_distort={self.max_distort}, "
            f"fix_crop={self.fix_crop})"
        )


# ----------------------------------------------------------------------------- Cutout


class CutoutPIL:
    """One square hole of one random colour (SLCutoutPIL of the Query2Label baseline, REFERENCE d.2).

    The hole's side is ``size_frac * min(W, H)`` (224 px at 448), its centre a uniformly random pixel; the
    part outside the image is clipped away. The input image is not modified.
    """

    def __init__(self, size_frac: float = 0.5) -> None:
        if not 0.0 < size_frac <= 1.0:
            raise ValueError(f"size_frac must be in (0, 1], got {size_frac}")
        self.size_frac = float(size_frac)

    def get_params(self, width: int, height: int) -> tuple[tuple[int, int, int, int], tuple[int, ...]]:
        """Draw the hole's box (left, top, right, bottom; right/bottom exclusive) and its RGB colour."""
        side = max(1, int(round(self.size_frac * min(width, height))))
        cx, cy = random.randrange(width), random.randrange(height)
        x0, y0 = cx - side // 2, cy - side // 2
        box = (max(0, x0), max(0, y0), min(width, x0 + side), min(height, y0 + side))
        colour = tuple(random.randint(0, 255) for _ in range(3))
        return box, colour

    def __call__(self, img: Image.Image) -> Image.Image:
        box, colour = self.get_params(*img.size)
        out = img.copy()
        bands = len(out.getbands())
        out.paste(colour[0] if bands == 1 else colour + (255,) * (bands - 3), box)
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size_frac={self.size_frac})"


# ----------------------------------------------------------------------------- RandAugment

# Each op maps (img, level in [0, 1], fill colour) -> img; level = magnitude / 10. The ranges are the usual
# AutoAugment ones (shear 0.3, translate 45 % of the side, rotate 30 deg, enhance factor 1 +- 0.9,
# solarize threshold 256 -> 0, posterize 8 -> 4 bits, cutout up to 20 % of the side).


def _signed(v: float) -> float:
    return v if random.random() < 0.5 else -v


def _affine(img: Image.Image, coeffs: tuple[float, ...], fill) -> Image.Image:
    return img.transform(img.size, Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR, fillcolor=fill)


def _cutout(img: Image.Image, level: float, fill) -> Image.Image:
    w, h = img.size
    side = int(round(0.2 * level * min(w, h)))
    if side <= 0:
        return img
    cx, cy = random.randrange(w), random.randrange(h)
    x0, y0 = cx - side // 2, cy - side // 2
    out = img.copy()
    out.paste(fill, (max(0, x0), max(0, y0), min(w, x0 + side), min(h, y0 + side)))
    return out


RANDAUGMENT_OPS: dict[str, Callable[[Image.Image, float, tuple[int, int, int]], Image.Image]] = {
    "Invert": lambda img, lv, fill: ImageOps.invert(img),
    "Cutout": _cutout,
    "Sharpness": lambda img, lv, fill: ImageEnhance.Sharpness(img).enhance(1.0 + _signed(0.9 * lv)),
    "AutoContrast": lambda img, lv, fill: ImageOps.autocontrast(img),
    "Posterize": lambda img, lv, fill: ImageOps.posterize(img, int(8 - 4 * lv)),
    "ShearX": lambda img, lv, fill: _affine(img, (1, _signed(0.3 * lv), 0, 0, 1, 0), fill),
    "TranslateX": lambda img, lv, fill: _affine(img, (1, 0, _signed(0.45 * lv) * img.size[0], 0, 1, 0), fill),
    "TranslateY": lambda img, lv, fill: _affine(img, (1, 0, 0, 0, 1, _signed(0.45 * lv) * img.size[1]), fill),
    "ShearY": lambda img, lv, fill: _affine(img, (1, 0, 0, _signed(0.3 * lv), 1, 0), fill),
    "Rotate": lambda img, lv, fill: img.rotate(_signed(30.0 * lv), Image.Resampling.BILINEAR, fillcolor=fill),
    "Equalize": lambda img, lv, fill: ImageOps.equalize(img),
    "Contrast": lambda img, lv, fill: ImageEnhance.Contrast(img).enhance(1.0 + _signed(0.9 * lv)),
    "Color": lambda img, lv, fill: ImageEnhance.Color(img).enhance(1.0 + _signed(0.9 * lv)),
    "Solarize": lambda img, lv, fill: ImageOps.solarize(img, int(256 - 256 * lv)),
    "Brightness": lambda img, lv, fill: ImageEnhance.Brightness(img).enhance(1.0 + _signed(0.9 * lv)),
}


class RandAugment:
    """UDA-style RandAugment on PIL RGB images, as used by the Query2Label baseline (REFERENCE d.2).

    Each call draws ``num_ops`` ops uniformly (with replacement) from the 15 of `RANDAUGMENT_OPS`, each with
    its own magnitude uniform in ``magnitudes`` (1..9) out of 10, and applies each with probability ``p``.
    """

    def __init__(
        self,
        num_ops: int = 2,
        magnitudes: tuple[int, int] = (1, 9),
        p: float = 0.5,
        fill: tuple[int, int, int] = (128, 128, 128),
        ops: Sequence[str] | None = None,
    ) -> None:
        ops = list(RANDAUGMENT_OPS) if ops is None else list(ops)
        unknown = [o for o in ops if o not in RANDAUGMENT_OPS]
        if unknown:
            raise ValueError(f"unknown RandAugment op(s) {unknown}; known: {list(RANDAUGMENT_OPS)}")
        lo, hi = magnitudes
        if not 0 <= lo <= hi <= 10:
            raise ValueError(f"magnitudes must satisfy 0 <= low <= high <= 10, got {magnitudes}")
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.num_ops, self.magnitudes, self.p, self.fill, self.ops = int(num_ops), (lo, hi), float(p), fill, ops

    @staticmethod
    def apply_op(img: Image.Image, name: str, magnitude: float, fill=(128, 128, 128)) -> Image.Image:
        """Apply one named op at `magnitude` (0..10) to an RGB image."""
        if img.mode != "RGB":
            raise ValueError(f"RandAugment expects an RGB image, got mode {img.mode!r}")
        return RANDAUGMENT_OPS[name](img, magnitude / 10.0, fill)

    def __call__(self, img: Image.Image) -> Image.Image:
        for _ in range(self.num_ops):
            name = random.choice(self.ops)
            magnitude = random.randint(*self.magnitudes)
            if random.random() < self.p:
                img = self.apply_op(img, name, magnitude, self.fill)
        return img

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_ops={self.num_ops}, magnitudes={self.magnitudes}, p={self.p})"


# ----------------------------------------------------------------------------- tensor conversion


class ToTensor(T.ToTensor):
    """torchvision's ``ToTensor``, bit for bit, that never returns memory shared with its input.

    An 8-bit RGB or L PIL image is converted to float and to channel-first order by one copy, then divided by
    255 in place; torchvision makes a channel-first uint8 copy, then a float copy, then the quotient (three
    passes and allocations). Every other input goes to torchvision, and a result that still shares the input
    array's memory (a float array) is copied, so the `Normalize` after it can work in place.
    """

    def __call__(self, pic) -> torch.Tensor:
        if isinstance(pic, Image.Image) and pic.mode in ("RGB", "L"):
            pixels = torch.from_numpy(np.array(pic, dtype=np.uint8))  # writable copy (PIL's array is not)
            channels = len(pic.getbands())
            out = torch.empty((channels, pic.height, pic.width), dtype=torch.get_default_dtype())
            out.copy_(pixels.view(pic.height, pic.width, channels).permute(2, 0, 1))
            return out.div_(255)
        out = super().__call__(pic)
        if isinstance(pic, np.ndarray) and np.may_share_memory(out.numpy(), pic):
            out = out.clone()
        return out


def _to_normalized_tensor(mean: Sequence[float], std: Sequence[float]) -> list:
    """The tail of every pipeline: `ToTensor`, then ``Normalize`` in place (its input is always a new tensor)."""
    return [ToTensor(), T.Normalize(mean=list(mean), std=list(std), inplace=True)]


# ----------------------------------------------------------------------------- pipelines


def eval_transform(
    img_size: int | Sequence[int],
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    interpolation: str = "bilinear",
) -> T.Compose:
    """The authors' evaluation: Resize((s, s)) (aspect not kept) -> ToTensor -> Normalize.

    The one evaluation preprocessing of the package (``sadcl.predict``, ``sadcl eval``, training's validation);
    timm's ``create_transform`` with ``crop_mode="squash", crop_pct=1.0`` builds the same steps.
    """
    return T.Compose(
        [T.Resize(_pair(img_size), interpolation=_interpolation(interpolation)), *_to_normalized_tensor(mean, std)]
    )


def train_transform(
    img_size: int,
    recipe: str = "sadcl",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    flip: bool = True,
    interpolation: str = "bilinear",
) -> T.Compose:
    """Training augmentation of the recipe.

    recipe="sadcl" (step 2, REFERENCE d.3): Resize to s*512//448 (512 at 448) -> MultiScaleCrop(s) ->
    RandomHorizontalFlip (dropped with ``flip=False``, for data where a mirror changes the labels) ->
    ToTensor -> Normalize.
    recipe="baseline" (Query2Label step 1, d.2): Resize((s, s)) -> CutoutPIL(0.5) -> RandAugment ->
    ToTensor -> Normalize (the baseline has no flip; ``flip`` is ignored).
    """
    mode = _interpolation(interpolation)
    tail = _to_normalized_tensor(mean, std)
    if recipe == "sadcl":
        big = img_size * 512 // 448
        ops = [T.Resize((big, big), interpolation=mode), MultiScaleCrop(img_size, interpolation=interpolation)]
        if flip:
            ops.append(T.RandomHorizontalFlip())
        return T.Compose(ops + tail)
    if recipe == "baseline":
        return T.Compose([T.Resize((img_size, img_size), interpolation=mode), CutoutPIL(0.5), RandAugment()] + tail)
    raise ValueError(f"recipe must be 'sadcl' or 'baseline', got {recipe!r}")
