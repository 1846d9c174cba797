"""Robust image loading: every image the model sees goes through `load_image`.

Real photo collections hold grayscale scans, PNGs with alpha, palette GIFs, 16-bit TIFF/PNG, CMYK JPEGs and
phone pictures whose pixels are stored sideways with an EXIF orientation tag. `load_image` turns all of them
into the upright 8-bit RGB image the network was trained on, and a file that cannot be read fails loudly
with `ImageLoadError`, naming the file, instead of silently becoming a wrong training sample.
"""

from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .._files import not_regular_reason, open_regular

__all__ = ["IMAGE_SUFFIXES", "ImageLoadError", "load_image", "to_rgb", "check_image"]

# File names taken for images where a folder is read (a prediction job, a dataset's unlisted files).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})

PathOrImage = str | os.PathLike | Image.Image

# Pillow modes holding one 16-bit (or wider integer) channel: PNG/TIFF 16-bit grayscale.
_INT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_EXIF_ORIENTATION = 0x0112  # the EXIF tag (ExifTags.Base.Orientation, which Pillow < 9.3 lacks)


class ImageLoadError(OSError):
    """An image file is missing, truncated, corrupt or in a mode that cannot be converted to RGB."""


def _composite_on_black(img: Image.Image) -> Image.Image:
    """Drop the alpha channel by compositing on black: a transparent pixel becomes (0, 0, 0)."""
    rgba = img.convert("RGBA")
    canvas = Image.new("RGB", rgba.size, (0, 0, 0))
    canvas.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
    return canvas


def _wide_int_to_rgb(img: Image.Image) -> Image.Image:
    """Scale a 16-bit grayscale image to 8 bits (v / 257, so 65535 -> 255) instead of clipping at 255.

    Mode "I" (32-bit signed) is what Pillow uses for many 16-bit files, so it is read on the same 0..65535
    scale; values outside that range (rare 32-bit data) are clipped to it.
    """
    arr = np.asarray(img).astype(np.float64)
    arr = np.clip(arr, 0, 65535) / 257.0
    gray = Image.fromarray(np.round(arr).astype(np.uint8), mode="L")
    return gray.convert("RGB")


def _float_to_rgb(img: Image.Image) -> Image.Image:
    """Mode "F" (float TIFF): read as [0, 1] when all values fit there, else as [0, 255]; clipped."""
    arr = np.asarray(img).astype(np.float64)
    finite = arr[np.isfinite(arr)]
    scale = 255.0 if finite.size and finite.min() >= 0.0 and finite.max() <= 1.0 else 1.0
    arr = np.nan_to_num(arr * scale, nan=0.0, posinf=255.0, neginf=0.0)
    gray = Image.fromarray(np.round(np.clip(arr, 0, 255)).astype(np.uint8), mode="L")
    return gray.convert("RGB")


def to_rgb(img: Image.Image, name: str = "<image>") -> Image.Image:
    """Convert a Pillow image of any common mode to 8-bit RGB (alpha composited on black)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        return _composite_on_black(img)
    if mode in _INT_MODES:
        return _wide_int_to_rgb(img)
    if mode == "F":
        return _float_to_rgb(img)
    try:
        # "1", "L", "P" without transparency, "CMYK", "YCbCr", "RGBX", ...
        return img.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageLoadError(f"cannot convert image {name} from mode {mode!r} to RGB: {exc}") from exc


def _upright(img: Image.Image, name: str) -> Image.Image:
    """Apply the EXIF orientation tag so the pixels are upright, as a viewer would show them.

    An image already upright (no tag, or orientation 1: nearly every file) is returned as it is: Pillow's
    ``exif_transpose`` would return a copy of it, a full copy of the pixels per image for nothing.
    """
    try:
        if img.getexif().get(_EXIF_ORIENTATION, 1) == 1:
            return img
        return ImageOps.exif_transpose(img)
    except Exception as exc:  # a malformed EXIF block must not make an otherwise fine image unusable
        warnings.warn(f"ignoring unreadable EXIF orientation of {name}: {exc}", stacklevel=3)
        return img


def _too_many_pixels(path: Path) -> ImageLoadError:
    return ImageLoadError(
        f"cannot load image {path}: it declares more pixels than PIL.Image.MAX_IMAGE_PIXELS "
        f"({Image.MAX_IMAGE_PIXELS}), possibly a decompression bomb, so it was not decoded; "
        "if you trust the file, raise that limit"
    )


def load_image(image: PathOrImage) -> Image.Image:
    """Load an image file (or take a Pillow image) and return it upright, in 8-bit RGB.

    Raises:
        ImageLoadError: the file is missing, not a regular file (FIFO, device, directory, symlink loop:
            refused without being opened), not an image, truncated/corrupt, larger than
            ``PIL.Image.MAX_IMAGE_PIXELS`` (refused before decoding), or in an unconvertible mode.
            The message names the file and the reason.
    """
    if isinstance(image, Image.Image):
        return to_rgb(_upright(image, "<PIL image>"), "<PIL image>")
    if not isinstance(image, (str, os.PathLike)):
        raise TypeError(f"load_image expects a file path or a PIL.Image, got {type(image).__name__}")
    path = Path(image)
    # stat, never open, anything but a regular file: a FIFO named x.png would block forever.
    not_regular = not_regular_reason(path)
    if not_regular is not None:
        raise ImageLoadError(f"cannot load image {path}: {not_regular}")
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that: refuse those too, before decoding.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # Opened by us, non-blocking and checked again: nothing but a regular file reaches Pillow.
            with open_regular(path, "image", ImageLoadError) as fp, Image.open(fp) as opened:
                limit = Image.MAX_IMAGE_PIXELS
                if limit and opened.width * opened.height > limit:  # also when another thread reset the filter
                    raise _too_many_pixels(path)
                opened.load()  # decode now: truncation and corruption surface here, not later in a worker
                img = _upright(opened, str(path))
                rgb = to_rgb(img, str(path))
                if rgb is opened and getattr(opened, "map", None) is not None:
                    # pixels read through a memory map of the file (uncompressed formats): copied, so that a
                    # file changed or truncated later cannot change them (or fault on access). Decoded pixels
                    # are already in memory: closing the file does not touch them.
                    rgb = rgb.copy()
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_many_pixels(path) from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError) as exc:
        reason = "not a recognised image file" if isinstance(exc, Image.UnidentifiedImageError) else str(exc)
        raise ImageLoadError(f"cannot load image {path}: {reason or type(exc).__name__}") from exc
    return rgb


def check_image(path: str | os.PathLike) -> str | None:
    """Return None when `path` loads as an image, else the reason it does not (used by ``skip_bad``)."""
    try:
        load_image(path)
    except ImageLoadError as exc:
        return str(exc)
    return None
