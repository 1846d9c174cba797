"""Strict loading of SADCL weights, and the header every weights file sadcl writes.

Loading is strict: a missing, unexpected or mis-shaped key is an error. The one tolerated difference is a
head change the caller asked for (another label set): then everything else loads strictly and only the
label-specific parameters (label queries, group-wise classifier, prototypes) keep a fresh initialisation.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any

import torch

from ..data.preprocessing import from_pretrained_cfg
from ..model import LABEL_SPECIFIC_KEYS, SADCL
from .header import WeightsHeader

__all__ = [
    "HeadChangeWarning",
    "LoadError",
    "checkpoint_metadata",
    "export_state_dict",
    "header_for",
    "load_pretrained",
]


class HeadChangeWarning(UserWarning):
    """The checkpoint's label set differs from the model's: label-specific parameters were re-initialised."""


class LoadError(RuntimeError):
    """Weights do not fit the model (missing/unexpected keys, shapes). ``details`` holds the full key lists."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


def header_for(model: SADCL, *, training: Mapping[str, Any] | None = None) -> WeightsHeader:
    """The self-describing header of ``model``'s weights: config, labels, preprocessing, descent, version."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return WeightsHeader(
        config=dict(model.config),
        preprocessing=from_pretrained_cfg(cfg, model.config["img_size"]),
        variant=cfg.get("variant"),
        source=_public_source(cfg.get("source")),
        training=dict(training) if training is not None else None,
    )


def _public_source(source: Any) -> str | None:
    """A source fit to be written into a file others may receive: a variant or Hub name as it is, a local
    path by its file or folder name only (the rest of a path says nothing about the model, much about the user)."""
    if not isinstance(source, str) or not source:
        return None
    if source.startswith("hf-hub:") or "/" not in source and "\\" not in source:
        return source
    return os.path.basename(source.rstrip("/\\")) or None


def checkpoint_metadata(model: SADCL, *, training: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The safetensors header entries written next to a model's weights (see :mod:`sadcl.zoo.header`)."""
    return header_for(model, training=training).to_metadata()


def export_state_dict(model: SADCL) -> dict[str, torch.Tensor]:
    """Model weights for publishing: contiguous CPU tensors (training state such as a memory bank is not part of it)."""
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def _key_problems(
    model_keys: Mapping[str, torch.Size], state_dict: Mapping[str, torch.Tensor], skip: set[str]
) -> tuple[list[str], list[str], list[str]]:
    required = set(model_keys) - skip
    missing = sorted(required - set(state_dict))
    unexpected = sorted(set(state_dict) - set(model_keys))
    mismatched = sorted(
        f"{k}: file {tuple(v.shape)} vs model {tuple(model_keys[k])}"
        for k, v in state_dict.items()
        if k in model_keys and k not in skip and tuple(v.shape) != tuple(model_keys[k])
    )
    return missing, unexpected, mismatched


def load_pretrained(
    model: SADCL,
    state_dict: Mapping[str, torch.Tensor],
    *,
    source: str = "checkpoint",
    head_change: bool = False,
    recorded: str | None = None,
) -> list[str]:
    """Load ``state_dict`` into ``model`` strictly; return the re-initialised keys (empty unless ``head_change``).

    ``model`` may live on the meta device (built without initialising its weights): the file's tensors are
    then taken as they are (cast to the model's dtypes), and with ``head_change`` the label-specific parameters
    are initialised afresh on the CPU. ``recorded`` describes what the file says it is, for the error message.
    """
    state = dict(state_dict)
    current = model.state_dict()
    expected = {k: v.shape for k, v in current.items()}
    file_classes = state["fc.b"].shape[-1] if "fc.b" in state else None
    skip = set(LABEL_SPECIFIC_KEYS) if head_change else set()
    missing, unexpected, mismatched = _key_problems(expected, state, skip)
    if missing or unexpected or mismatched:
        counts = ", ".join(
            f"{len(keys)} {title}"
            for title, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mismatched))
            if keys
        )
        first = (missing + unexpected + mismatched)[0]
        what = f" (the file records {recorded})" if recorded else ""
        details = "\n".join(
            f"{title}: {', '.join(keys)}"
            for title, keys in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches", mismatched),
            )
            if keys
        )
        raise LoadError(
            f"{source} does not fit a SADCL model with backbone {model.config['backbone']!r}, hidden_dim "
            f"{model.config['hidden_dim']}{what}: {counts} key(s), e.g. {first}. Load the file without naming a "
            "variant so its own architecture is used; an authors'/Query2Label .pth needs `sadcl convert` first.",
            details,
        )
    on_meta = any(p.is_meta for p in model.parameters())
    reinit = [k for k in LABEL_SPECIFIC_KEYS if k in state] if head_change else []
    for k in reinit:
        del state[k]
    if on_meta:
        state = {k: v.to(current[k].dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=not head_change, assign=on_meta)
    if head_change and on_meta:
        model.reset_classifier(model.num_classes, model.label_names)  # fresh label parameters, on the CPU now
    leftovers = [k for k, v in [*model.named_parameters(), *model.named_buffers()] if v.is_meta]
    if leftovers:  # a buffer the state dict does not carry: never hand out a model that cannot run
        raise LoadError(f"{source}: {len(leftovers)} tensor(s) were not in the file, e.g. {leftovers[0]}")
    if head_change:
        warnings.warn(
            f"{source}: label set differs from the file's ({file_classes} labels → {model.num_classes}); "
            f"loaded everything else strictly and re-initialised {', '.join(reinit) or 'the label parameters'}.",
            HeadChangeWarning,
            stacklevel=3,
        )
    return reinit
