"""From the options a user gives (``sadcl train``/``sadcl eval`` flags, as keyword names) to a
:class:`TrainConfig` and :class:`DataSpec` s."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from ..data.layouts import LAYOUTS
from ..model import CONSTRUCTOR_KEYS
from .config import TrainConfig, cli_flag
from .data import DataSpec

__all__ = ["DATA_OPTIONS", "config_from_options", "data_specs", "parse_model_args"]

DATA_OPTIONS = (
    "data",
    "images",
    "val_data",
    "val_images",
    "data_format",
    "split",
    "val_split",
    "voc_year",
    "label_names",
    "skip_bad",
)

# (training, validation) split of a format whose data holds several; the paper's layouts: sadcl.data.layouts.
DEFAULT_SPLITS = {"voc": ("trainval", "test"), **{name: ("train", "val") for name in LAYOUTS}}


def parse_model_args(items: Sequence[str] | Mapping[str, Any]) -> dict[str, Any]:
    """``["hidden_dim=32", "dropout=0"]`` → ``{"hidden_dim": 32, "dropout": 0}`` (values read as JSON, else text)."""
    if isinstance(items, Mapping):
        return dict(items)
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--model-arg expects KEY=VALUE (a SADCL constructor keyword), got {item!r}")
        if key.strip() not in CONSTRUCTOR_KEYS:
            raise ValueError(
                f"--model-arg {key.strip()!r} is not a SADCL constructor keyword; valid: {', '.join(CONSTRUCTOR_KEYS)}"
            )
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def data_specs(options: Mapping[str, Any]) -> dict[str, DataSpec]:
    """``data``/``val_data`` specs from flat options (``data``, ``images``, ``data_format``, ``split`` …)."""
    o = dict(options)
    fmt, year = o.get("data_format", "csv"), str(o.get("voc_year", "2007"))
    specs: dict[str, DataSpec] = {}
    for key, images, split in (("data", "images", "split"), ("val_data", "val_images", "val_split")):
        if o.get(key) is None:
            if o.get(images) is not None:
                raise ValueError(f"{cli_flag(images)} was given without {cli_flag(key)}")
            continue
        default_split = DEFAULT_SPLITS.get(fmt, (None, None))[key != "data"]
        specs[key] = DataSpec(
            o[key],
            fmt,
            images=o.get(images),
            split=o.get(split) or default_split,
            year=year,
            label_names=o.get("label_names") if key == "data" else None,
            skip_bad=bool(o.get("skip_bad", False)),
        )
    return specs


def config_from_options(options: Mapping[str, Any]) -> TrainConfig:
    """A :class:`TrainConfig` from the options a user gave (``TrainConfig`` field names plus
    :data:`DATA_OPTIONS`); everything not given keeps its recipe default. With ``resume`` the checkpoint's
    settings are kept and only run settings (data location, workers, device, output …) may be given."""
    opts = {k: v for k, v in options.items() if k not in DATA_OPTIONS}
    opts.update(data_specs({k: v for k, v in options.items() if k in DATA_OPTIONS}))
    if "model_args" in opts:
        opts["model_args"] = parse_model_args(opts["model_args"])
    if opts.get("resume"):
        resume = opts.pop("resume")
        return TrainConfig.from_checkpoint(resume, **opts)  # refuses changed trajectory settings
    if "data" not in opts:
        raise ValueError("no training data: give --data (and --data-format if it is not a CSV file)")
    return TrainConfig(**opts)
