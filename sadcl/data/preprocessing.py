"""How images are prepared for a model, in timm's terms (``pretrained_cfg`` keys).

One description, :class:`Preprocessing`, travels with every model: in ``model.pretrained_cfg``, in the header
of every weights file sadcl writes and in an export's ``config.json``. The evaluation transform is built from
it in exactly one place (:func:`sadcl.data.transforms.eval_transform`), and timm's own
``timm.data.create_transform(**timm.data.resolve_model_data_config(model))`` builds the same pipeline from the
same keys: ``crop_mode="squash"`` with ``crop_pct=1.0`` is the authors' Resize((s, s)), no crop.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")
MAX_IMG_SIZE = 8192  # pixels per side; a file claiming more is not a SADCL model


class PreprocessingError(ValueError):
    """A preprocessing description is malformed (wrong type, out of range)."""


@dataclass(frozen=True)
class Preprocessing:
    """Evaluation preprocessing: squash-resize to ``input_size`` (no crop), ToTensor, Normalize(mean, std)."""

    input_size: tuple[int, int, int]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    crop_pct: float = 1.0
    crop_mode: str = "squash"

    @classmethod
    def square(cls, img_size: int, **kwargs: Any) -> Preprocessing:
        return cls(input_size=(3, int(img_size), int(img_size)), **kwargs)

    @property
    def img_size(self) -> tuple[int, int]:
        return self.input_size[1], self.input_size[2]

    def to_dict(self) -> dict[str, Any]:
        """timm's ``pretrained_cfg`` keys, JSON-ready (lists, not tuples)."""
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def to_cfg(self) -> dict[str, Any]:
        """timm's ``pretrained_cfg`` keys as timm keeps them in memory (tuples)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "preprocessing") -> Preprocessing:
        """Validate an untrusted mapping (a file's header, a ``config.json``, a ``pretrained_cfg``)."""
        if not isinstance(data, Mapping):
            raise PreprocessingError(f"{where}: expected an object, got {type(data).__name__}")
        size = data.get("input_size")
        if (
            not isinstance(size, (list, tuple))
            or len(size) != 3
            or not all(_is_int(v) for v in size)
            or size[0] != 3
            or not all(1 <= v <= MAX_IMG_SIZE for v in size[1:])
        ):
            raise PreprocessingError(
                f"{where}: input_size must be [3, H, W] with 1 <= H, W <= {MAX_IMG_SIZE}, got {_short(size)}"
            )
        mean = _triple(data.get("mean", IMAGENET_MEAN), f"{where}: mean", positive=False)
        std = _triple(data.get("std", IMAGENET_STD), f"{where}: std", positive=True)
        interpolation = data.get("interpolation", "bilinear")
        if interpolation not in INTERPOLATIONS:
            raise PreprocessingError(
                f"{where}: interpolation must be one of {list(INTERPOLATIONS)}, got {_short(interpolation)}"
            )
        crop_pct = data.get("crop_pct", 1.0)
        crop_mode = data.get("crop_mode", "squash")
        if crop_pct != 1.0 or crop_mode != "squash":
            # SADCL is evaluated on the whole image squashed to a square (REFERENCE d.2): no other mode exists.
            raise PreprocessingError(
                f"{where}: sadcl evaluates with crop_mode 'squash' and crop_pct 1.0, "
                f"got {_short(crop_mode)} / {_short(crop_pct)}"
            )
        return cls(input_size=(3, int(size[1]), int(size[2])), mean=mean, std=std, interpolation=interpolation)

    def transform(self):
        """The evaluation transform (PIL RGB image → normalised float tensor ``[3, H, W]``)."""
        from .transforms import eval_transform

        return eval_transform(self.img_size, mean=self.mean, std=self.std, interpolation=self.interpolation)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _triple(v: Any, where: str, *, positive: bool) -> tuple[float, float, float]:
    ok = (
        isinstance(v, (list, tuple))
        and len(v) == 3
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)
    )
    if ok and positive:
        ok = all(x > 0 for x in v)  # a zero std turns every score into NaN
    if not ok:
        need = "three finite numbers > 0" if positive else "three finite numbers"
        raise PreprocessingError(f"{where} must be {need}, got {_short(v)}")
    return (float(v[0]), float(v[1]), float(v[2]))


def from_pretrained_cfg(cfg: Mapping[str, Any], fallback_size: int | Sequence[int] | None = None) -> Preprocessing:
    """The preprocessing a model's ``pretrained_cfg`` describes (validated)."""
    data = dict(cfg)
    if "input_size" not in data and fallback_size is not None:
        s = fallback_size if isinstance(fallback_size, int) else fallback_size[-1]
        data["input_size"] = (3, s, s)
    return Preprocessing.from_dict(
        {k: data[k] for k in ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode") if k in data},
        "pretrained_cfg",
    )


def create_transform(model_or_cfg: Any, *, training: bool = False, recipe: str = "sadcl"):
    """The image transform of a model (or of its ``pretrained_cfg`` mapping): PIL RGB image → tensor.

    ``training=False`` is the evaluation preprocessing, the one ``sadcl.predict``/``sadcl eval`` use and the one
    ``timm.data.create_transform(**timm.data.resolve_model_data_config(model))`` reproduces.
    ``training=True`` is the recipe's augmentation (``recipe="sadcl"``: multi-scale crop + flip;
    ``"baseline"``: cutout + RandAugment) at the same size and normalisation.
    """
    cfg = model_or_cfg if isinstance(model_or_cfg, Mapping) else getattr(model_or_cfg, "pretrained_cfg", None)
    if not isinstance(cfg, Mapping):
        raise TypeError(
            f"create_transform needs a model with a pretrained_cfg or a mapping, got {type(model_or_cfg).__name__}"
        )
    pre = from_pretrained_cfg(cfg)
    if not training:
        return pre.transform()
    from .transforms import train_transform

    return train_transform(pre.img_size[0], recipe=recipe, mean=pre.mean, std=pre.std, interpolation=pre.interpolation)
