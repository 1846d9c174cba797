"""The starting model of a run: a variant, a weights file, or the default, through the one factory."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from ..model import CONSTRUCTOR_KEYS, SADCL
from ..zoo import create_model
from ..zoo.factory import model_from_args, model_from_header
from .config import DEFAULT_TRAIN_MODEL, TrainConfig

__all__ = ["load_model", "run_model"]


def load_model(
    name: str | None = None,
    *,
    checkpoint: str | os.PathLike | None = None,
    pretrained: bool = False,
    label_names: Sequence[str] | None = None,
    **overrides: Any,
) -> SADCL:
    """The starting model of a run, through the one factory (:func:`sadcl.zoo.factory.create_model`).

    ``checkpoint`` alone: the file's own architecture, labels and preprocessing. ``name`` with ``checkpoint``:
    that variant, which the file must match. ``name`` alone: the variant, with its published weights when
    ``pretrained``. Neither: :data:`DEFAULT_TRAIN_MODEL`. ``label_names`` different from the weights' re-initialise
    only the label-specific parameters (queries, classifier, prototypes); ``overrides`` are SADCL keywords."""
    kwargs = dict(overrides)
    if label_names is not None:
        kwargs["label_names"] = list(label_names)
    if checkpoint is not None:
        return model_from_args(name, checkpoint, **kwargs)
    return create_model(name or DEFAULT_TRAIN_MODEL, pretrained=pretrained, **kwargs)


def run_model(cfg: TrainConfig, model: SADCL | None, label_names: list[str], ckpt: Mapping[str, Any] | None) -> SADCL:
    """The model a run trains: the resumed run's, the one given (its labels must be the data's), or
    :func:`load_model` of ``cfg``'s model settings with the data's labels."""
    if ckpt is not None:
        stored = dict(ckpt["model_config"])
        if stored.get("label_names") != label_names:
            raise ValueError(
                f"the training data's labels differ from the checkpoint's ({cfg.resume}); resume with the same data"
            )
        if model is None:
            if "weights_header" in ckpt:  # the model as it was described when the run began
                model = model_from_header(ckpt["weights_header"], f"{cfg.resume}")
            else:  # a last.pt of sadcl 0.1
                model = create_model(
                    cfg.model or DEFAULT_TRAIN_MODEL, **{k: v for k, v in stored.items() if k in CONSTRUCTOR_KEYS}
                )
        return model
    if model is not None:
        if model.label_names != label_names:
            raise ValueError(
                f"the model's labels {model.label_names[:5]}… differ from the training data's "
                f"{label_names[:5]}…; call model.reset_classifier(len(names), names) first"
            )
        return model
    overrides = dict(cfg.model_args)
    if cfg.img_size is not None:
        overrides["img_size"] = cfg.img_size
    if not (cfg.pretrained or cfg.checkpoint):
        overrides["pretrained_backbone"] = cfg.pretrained_backbone
    return load_model(
        cfg.model, checkpoint=cfg.checkpoint, pretrained=cfg.pretrained, label_names=label_names, **overrides
    )
