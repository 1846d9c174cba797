"""Strict loading of SADCL weights, with head changes as the only tolerated difference."""
from __future__ import annotations

import json
import warnings
from typing import Mapping

import torch

from ..model import LABEL_SPECIFIC_KEYS, SADCL

CONFIG_KEY = "sadcl_config"  # safetensors header entry holding the model's constructor config (JSON)


class HeadChangeWarning(UserWarning):
    """The checkpoint's label set differs from the model's: label-specific parameters were re-initialised."""


def checkpoint_metadata(model: SADCL) -> dict[str, str]:
    """The safetensors header entries written next to a model's weights."""
    return {"format": "pt", CONFIG_KEY: json.dumps(model.config)}


def checkpoint_labels(state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None) -> list[str] | None:
    """Label names stored with a checkpoint (None when it does not say)."""
    if metadata and CONFIG_KEY in metadata:
        return list(json.loads(metadata[CONFIG_KEY]).get("label_names") or []) or None
    return None


def same_label_set(
    state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None, label_names: list[str]
) -> bool:
    """Whether a checkpoint was trained on exactly these labels (by name when it records them, else by count)."""
    ckpt_labels = checkpoint_labels(state_dict, metadata)
    ckpt_classes = state_dict["fc.b"].shape[-1] if "fc.b" in state_dict else None
    return ckpt_classes == len(label_names) and (ckpt_labels is None or ckpt_labels == label_names)


def load_pretrained(
    model: SADCL,
    state_dict: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
    *,
    source: str = "checkpoint",
    assign: bool = False,
) -> list[str]:
    """Load ``state_dict`` into ``model`` strictly.

    When the checkpoint's label set (names, or count) differs from the model's, every parameter except the
    label-specific ones (``query_embed``, ``fc``, ``prototypes``) is loaded strictly and those keep their fresh
    initialisation; a :class:`HeadChangeWarning` says so. Returns the re-initialised keys. ``assign`` takes the
    checkpoint's tensors (cast to the model's dtypes) instead of copying them: for a model built on the meta device.
    """
    state_dict = dict(state_dict)
    ckpt_classes = state_dict["fc.b"].shape[-1] if "fc.b" in state_dict else None
    same_head = same_label_set(state_dict, metadata, model.label_names)
    reinit: list[str] = []
    if not same_head:
        reinit = [k for k in LABEL_SPECIFIC_KEYS if k in state_dict]
        for k in reinit:
            del state_dict[k]
    expected = model.state_dict()
    required = set(expected) - (set() if same_head else set(LABEL_SPECIFIC_KEYS))
    missing = sorted(required - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = sorted(
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state_dict.items() if k in expected and v.shape != expected[k].shape
    )
    if missing or unexpected or mismatched:
        lines = [f"Cannot load {source} into {model.config['backbone']!r} SADCL strictly:"]
        for title, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
            if keys:
                lines.append(f"  {title} ({len(keys)}): {', '.join(keys[:8])}{' …' if len(keys) > 8 else ''}")
        lines.append("Check that the model's architecture overrides (backbone, hidden_dim, ...) match the checkpoint; "
                     "for an authors'/Query2Label checkpoint use sadcl.load_official_checkpoint.")
        raise RuntimeError("\n".join(lines))
    if assign:
        state_dict = {k: v.to(expected[k].dtype) for k, v in state_dict.items()}
    model.load_state_dict(state_dict, strict=same_head, assign=assign)
    if reinit:
        warnings.warn(
            f"{source}: label set differs from the checkpoint ({ckpt_classes} labels → {model.num_classes}); "
            f"loaded everything else strictly and re-initialised {', '.join(reinit)}.",
            HeadChangeWarning, stacklevel=3,
        )
    return reinit


def export_state_dict(model: SADCL) -> dict[str, torch.Tensor]:
    """Model weights for publishing: contiguous CPU tensors (training state such as a memory bank is not part of it)."""
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
