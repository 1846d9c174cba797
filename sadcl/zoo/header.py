"""The self-describing weights file: one versioned header in every ``.safetensors`` file sadcl writes.

A safetensors header holds a ``__metadata__`` map of strings. sadcl writes two entries:

* ``"format": "pt"`` (what timm, transformers and safetensors' own tools expect);
* ``"sadcl"``: one JSON object (keys sorted, no whitespace), format ``sadcl-weights`` version 2::

    {"format": "sadcl-weights", "format_version": 2, "sadcl_version": "0.2.0",
     "config": {SADCL constructor config: backbone, hidden_dim, ..., num_classes, label_names, img_size},
     "preprocessing": {"input_size": [3, H, W], "mean": [...], "std": [...], "interpolation": "bilinear",
                       "crop_pct": 1.0, "crop_mode": "squash"},
     "variant": "sadcl_fashion_mosaic" | null,     the registered variant whose architecture it has
     "source": "hf-hub:org/name@<commit>" | ... | null,  what the weights were loaded from before this file
     "training": {"epoch": ..., "mAP": ...} | null} how training selected these weights

The file is written by :func:`sadcl.zoo.safetensors_io.save_safetensors` deterministically (sorted metadata,
tensors in a fixed order, no timestamps), so the same weights and header give the same bytes and sha256. Files of
format version 1 (the ``sadcl_config``/``sadcl_variant``/``sadcl_training`` entries of sadcl 0.1) are still read.

Everything read here is untrusted: :func:`parse_header` validates every field (types, ranges, a plain timm
architecture name for the backbone) and raises :class:`HeaderError` naming the file and the field. Nothing in a
header can make sadcl download anything (``pretrained_backbone`` is never taken from a file) or allocate more
than the limits below before the weights themselves are read.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..data.preprocessing import Preprocessing, PreprocessingError
from ..model.sadcl import CONSTRUCTOR_KEYS

HEADER_KEY = "sadcl"
HEADER_FORMAT = "sadcl-weights"
HEADER_VERSION = 2
LEGACY_CONFIG_KEY = "sadcl_config"  # format version 1 (sadcl 0.1)
LEGACY_VARIANT_KEY = "sadcl_variant"
LEGACY_TRAINING_KEY = "sadcl_training"

# Constructor keys a file may set, with their type and bounds. pretrained_backbone is absent on purpose:
# a file can never make sadcl download a backbone.
_INT_LIMITS = {
    "num_classes": (1, 100_000),
    "img_size": (1, 8192),
    "hidden_dim": (1, 16_384),
    "ffn_dim": (1, 65_536),
    "num_heads": (1, 256),
    "num_encoder_layers": (0, 64),
    "num_decoder_layers": (1, 64),
    "proj_dim": (1, 16_384),
}
_BOOL_KEYS = ("freeze_bn", "freeze_stem", "fold_frozen_bn")
CONFIG_KEYS = tuple(k for k in CONSTRUCTOR_KEYS if k != "pretrained_backbone")
# Keys that decide the parameters' shapes and meaning (a checkpoint must match them); the others
# (img_size, dropout, freezing) are how the network is used or trained.
ARCHITECTURE_KEYS = (
    "backbone",
    "hidden_dim",
    "ffn_dim",
    "num_heads",
    "num_encoder_layers",
    "num_decoder_layers",
    "proj_dim",
)
MAX_LABEL_CHARS = 1_000
_TIMM_NAME = re.compile(r"[a-z0-9_]+(\.[a-z0-9_]+)?")  # timm "arch" or "arch.tag": never hf-hub:/local-dir:


class HeaderError(ValueError):
    """A weights file's header (or an export's ``config.json``) is malformed; the message names file and field."""


@dataclass(frozen=True)
class WeightsHeader:
    """What a weights file says about itself (see the module docstring for the JSON layout)."""

    config: dict[str, Any]
    preprocessing: Preprocessing
    variant: str | None = None
    source: str | None = None
    training: dict[str, Any] | None = None
    sadcl_version: str | None = None
    format_version: int = HEADER_VERSION
    extra: dict[str, Any] = field(default_factory=dict)  # unknown keys of a newer minor writer, kept as data

    @property
    def label_names(self) -> list[str]:
        return list(self.config["label_names"])

    def to_json(self) -> dict[str, Any]:
        from .. import __version__

        return {
            "format": HEADER_FORMAT,
            "format_version": HEADER_VERSION,
            "sadcl_version": __version__,
            "config": dict(self.config),
            "preprocessing": self.preprocessing.to_dict(),
            "variant": self.variant,
            "source": self.source,
            "training": self.training,
        }

    def to_metadata(self) -> dict[str, str]:
        return {"format": "pt", HEADER_KEY: canonical_json(self.to_json())}


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: the same value always gives the same bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


# ----------------------------------------------------------------------------- validation
def validate_config(raw: Any, where: str) -> dict[str, Any]:
    """Check an untrusted SADCL constructor config; return a clean copy (``pretrained_backbone`` dropped).

    ``where`` names the file and entry in messages, e.g. ``"runs/x/best.safetensors: header field config"``.
    """
    if not isinstance(raw, Mapping):
        raise HeaderError(f"{where} must be a JSON object, got {type(raw).__name__}")
    cfg = {k: v for k, v in raw.items() if k != "pretrained_backbone"}
    unknown = sorted(set(cfg) - set(CONFIG_KEYS))
    if unknown:
        raise HeaderError(f"{where} has unknown key(s) {_short(unknown)} (written by a newer sadcl? upgrade sadcl)")
    backbone = cfg.get("backbone")
    if not isinstance(backbone, str) or not _TIMM_NAME.fullmatch(backbone):
        raise HeaderError(f"{where}.backbone must be a timm architecture name like 'resnet101', got {_short(backbone)}")
    import timm

    if not timm.is_model(backbone.split(".")[0]):
        raise HeaderError(f"{where}.backbone {backbone!r} is not a model of the installed timm")
    for key, (lo, hi) in _INT_LIMITS.items():
        if key in cfg and not (isinstance(cfg[key], int) and not isinstance(cfg[key], bool) and lo <= cfg[key] <= hi):
            raise HeaderError(f"{where}.{key} must be an integer in [{lo}, {hi}], got {_short(cfg[key])}")
    for key in _BOOL_KEYS:
        if key in cfg and not isinstance(cfg[key], bool):
            raise HeaderError(f"{where}.{key} must be true or false, got {_short(cfg[key])}")
    if "dropout" in cfg and not (
        isinstance(cfg["dropout"], (int, float))
        and not isinstance(cfg["dropout"], bool)
        and math.isfinite(cfg["dropout"])
        and 0 <= cfg["dropout"] < 1
    ):
        raise HeaderError(f"{where}.dropout must be a number in [0, 1), got {_short(cfg['dropout'])}")
    if "hidden_dim" in cfg and "num_heads" in cfg and cfg["hidden_dim"] % cfg["num_heads"]:
        raise HeaderError(f"{where}: hidden_dim {cfg['hidden_dim']} is not divisible by num_heads {cfg['num_heads']}")
    names = cfg.get("label_names")
    if (
        not isinstance(names, list)
        or not names
        or len(names) > _INT_LIMITS["num_classes"][1]
        or not all(isinstance(n, str) and 0 < len(n) <= MAX_LABEL_CHARS for n in names)
    ):
        raise HeaderError(
            f"{where}.label_names must be a non-empty list of names (strings of 1 to "
            f"{MAX_LABEL_CHARS} characters), got {_short(names)}"
        )
    if len(set(names)) != len(names):
        raise HeaderError(f"{where}.label_names has duplicated names")
    if cfg.get("num_classes", len(names)) != len(names):
        raise HeaderError(f"{where}.num_classes is {cfg['num_classes']} but it lists {len(names)} label_names")
    cfg["num_classes"] = len(names)
    return cfg


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


def _optional_str(v: Any, where: str) -> str | None:
    if v is not None and not (isinstance(v, str) and len(v) <= 4096):
        raise HeaderError(f"{where} must be a string or null, got {_short(v)}")
    return v


def parse_header(metadata: Mapping[str, str] | None, where: str) -> WeightsHeader | None:
    """The header of a weights file (``where`` names it), or None when the file records nothing about itself.

    Raises:
        HeaderError: a field has the wrong type or range, or the file was written by a newer sadcl.
    """
    metadata = dict(metadata or {})
    if HEADER_KEY in metadata:
        try:
            data = json.loads(metadata[HEADER_KEY])
        except ValueError as e:
            raise HeaderError(f"{where}: header entry {HEADER_KEY!r} is not valid JSON ({e})") from None
        if not isinstance(data, dict) or data.get("format") != HEADER_FORMAT:
            raise HeaderError(f"{where}: header entry {HEADER_KEY!r} is not a {HEADER_FORMAT} object")
        version = data.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 2:
            raise HeaderError(f"{where}: header field format_version must be an integer >= 2, got {_short(version)}")
        if version > HEADER_VERSION:
            raise HeaderError(
                f"{where} was written by a newer sadcl (header format_version {version}); "
                "upgrade sadcl (pip install -U sadcl)"
            )
        config = validate_config(data.get("config"), f"{where}: header field config")
        try:
            pre = Preprocessing.from_dict(data.get("preprocessing"), f"{where}: header field preprocessing")
        except PreprocessingError as e:
            raise HeaderError(str(e)) from None
        training = data.get("training")
        if training is not None and not isinstance(training, dict):
            raise HeaderError(f"{where}: header field training must be an object or null")
        known = {
            "format",
            "format_version",
            "sadcl_version",
            "config",
            "preprocessing",
            "variant",
            "source",
            "training",
        }
        return WeightsHeader(
            config=config,
            preprocessing=pre,
            variant=_optional_str(data.get("variant"), f"{where}: header field variant"),
            source=_optional_str(data.get("source"), f"{where}: header field source"),
            training=training,
            sadcl_version=_optional_str(data.get("sadcl_version"), f"{where}: header field sadcl_version"),
            format_version=version,
            extra={k: v for k, v in data.items() if k not in known},
        )
    if LEGACY_CONFIG_KEY in metadata:  # sadcl 0.1: constructor config (+ variant, training) as separate entries
        try:
            raw = json.loads(metadata[LEGACY_CONFIG_KEY])
        except ValueError as e:
            raise HeaderError(f"{where}: header entry {LEGACY_CONFIG_KEY!r} is not valid JSON ({e})") from None
        config = validate_config(raw, f"{where}: header entry {LEGACY_CONFIG_KEY}")
        variant = _optional_str(metadata.get(LEGACY_VARIANT_KEY), f"{where}: header entry {LEGACY_VARIANT_KEY}")
        training = None
        if LEGACY_TRAINING_KEY in metadata:
            try:
                training = json.loads(metadata[LEGACY_TRAINING_KEY])
            except ValueError:
                training = None  # informational only
            training = training if isinstance(training, dict) else None
        # Version 1 recorded no preprocessing: the variant's (resolved by the factory), else ImageNet's.
        pre = Preprocessing.square(config.get("img_size", 448))
        return WeightsHeader(
            config=config, preprocessing=pre, variant=variant, source=variant, training=training, format_version=1
        )
    return None
