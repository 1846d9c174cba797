"""The variant table: dataset, resolution, label set, paper metrics, weights; registered as timm factories.

Every variant is a thin factory over :class:`sadcl.model.SADCL`, registered with timm so that
``timm.create_model("sadcl_coco_448")`` and ``timm.list_models("sadcl_*")`` work once ``sadcl`` is imported.
"""
from __future__ import annotations

import contextlib
import difflib
import fnmatch
import inspect
import os
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

import torch
from timm.models import register_model

from ..model import SADCL
from ..model.sadcl import resolve_labels
from . import weights as _weights
from .loading import load_pretrained, same_label_set

_POSTER = "Ma et al., ECAI 2023, poster tables (shared/paper); not re-run here"
_PAPER_ARCH = dict(backbone="resnet101.tv_in1k", hidden_dim=2048, ffn_dim=8192, num_heads=4,
                   num_encoder_layers=1, num_decoder_layers=2, dropout=0.1, proj_dim=1024)


@dataclass(frozen=True)
class VariantCfg:
    """What a variant is: architecture, label set, preprocessing and the paper's results."""

    dataset: str
    labels: str  # a file in sadcl/zoo/labels/
    img_size: int
    description: str
    arch: dict[str, Any] = field(default_factory=lambda: dict(_PAPER_ARCH))
    metrics: dict[str, float] | None = None  # the paper's (or our measured) results, in percent
    metrics_source: str | None = None
    train_size: int | None = None  # resolution used for training when it differs from evaluation
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"
    num_params: int | None = None  # of the default architecture, checked by the tests


VARIANTS: dict[str, VariantCfg] = {
    "sadcl_coco_448": VariantCfg(
        dataset="MS-COCO 2014", labels="coco80", img_size=448, num_params=200_259_856,
        description="ResNet-101, trained and evaluated at 448 px on COCO-2014 (80 labels, category-id order).",
        metrics={"mAP": 85.6, "CP": 84.6, "CR": 76.0, "CF1": 79.8, "OP": 86.0, "OR": 78.5, "OF1": 82.1,
                 "CP_top3": 88.9, "CR_top3": 66.6, "CF1_top3": 74.9, "OP_top3": 91.0, "OR_top3": 68.3,
                 "OF1_top3": 78.0},
        metrics_source=_POSTER + ", MS-COCO table, (448, 448)",
    ),
    "sadcl_coco_576": VariantCfg(
        dataset="MS-COCO 2014", labels="coco80", img_size=576, train_size=448, num_params=200_259_856,
        description="The COCO model trained at 448 px and evaluated at 576 px (same weights as sadcl_coco_448).",
        metrics={"mAP": 86.8, "CF1": 81.1, "OF1": 83.2},
        metrics_source="authors' README results image (image/coco.png), (448, 576); not re-run here",
    ),
    "sadcl_voc2007_448": VariantCfg(
        dataset="PASCAL VOC 2007", labels="voc20", img_size=448, num_params=199_891_156,
        description="ResNet-101 at 448 px on VOC 2007 trainval (20 labels), initialised from COCO.",
        metrics={"mAP": 96.4}, metrics_source=_POSTER + ", VOC 2007 table",
    ),
    "sadcl_voc2012_448": VariantCfg(
        dataset="PASCAL VOC 2012", labels="voc20", img_size=448, num_params=199_891_156,
        description="ResNet-101 at 448 px on VOC 2012 trainval (20 labels); the authors validate on VOC 2007 test.",
        metrics=None, metrics_source="reported in arXiv 2307.09715, not recovered here",
    ),
    "sadcl_nuswide_448": VariantCfg(
        dataset="NUS-WIDE", labels="nuswide81", img_size=448, num_params=200_266_001,
        description="ResNet-101 at 448 px on NUS-WIDE (81 concepts, alphabetical order).",
        metrics={"mAP": 65.9, "CF1": 63.0, "OF1": 75.0, "CF1_top3": 57.8, "OF1_top3": 70.6},
        metrics_source=_POSTER + ", NUS-WIDE table (split not stated)",
    ),
    "sadcl_vg500_576": VariantCfg(
        dataset="Visual Genome 500", labels="vg500", img_size=576, num_params=202_840_756,
        description="ResNet-101 at 576 px on VG-500 (500 labels by index: the names were never published).",
        metrics=None, metrics_source="reported in arXiv 2307.09715, not recovered here",
    ),
    "sadcl_fashion_mosaic": VariantCfg(
        dataset="Fashion-MNIST 2x2 mosaics", labels="fashion10", img_size=56, num_params=5_414_466,
        description=("The default model: a ResNet-10-T SADCL trained from scratch by sadcl on multi-label "
                     "Fashion-MNIST mosaics (56x56, 10 labels); its checkpoint ships inside the package."),
        arch=dict(backbone="resnet10t", hidden_dim=128, ffn_dim=256, num_heads=4, num_encoder_layers=1,
                  num_decoder_layers=2, dropout=0.1, proj_dim=64, freeze_bn=False, freeze_stem=False),
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
        metrics={"mAP": 95.91, "mAP_sklearn": 95.9, "CP": 92.22, "CR": 90.1, "CF1": 91.11, "OP": 92.31, "OR": 90.03,
                 "OF1": 91.16, "CF1_top3": 90.51, "OF1_top3": 90.62},
        metrics_source=("measured by sadcl on 10,000 test mosaics (Fashion-MNIST test split, seed 2) with the packaged "
                        "float16 weights: benchmarks/results/fashion_model.json, from "
                        "`python benchmarks/package_fashion_model.py runs/fashion/step2`"),
    ),
    "sadcl_tiny": VariantCfg(
        dataset="none (tests and demos)", labels="voc20", img_size=64, num_params=487_460,
        description="A tiny network (timm test_resnet, width 64) with the VOC-20 label set, for tests and demos.",
        arch=dict(backbone="test_resnet", hidden_dim=64, ffn_dim=128, num_heads=4, num_encoder_layers=1,
                  num_decoder_layers=2, dropout=0.1, proj_dim=32),
    ),
}

_CONSTRUCTOR_KEYS = tuple(p for p in inspect.signature(SADCL.__init__).parameters if p != "self")


@lru_cache(maxsize=None)
def read_labels(name: str) -> tuple[str, ...]:
    """Label names of a packaged label set (``coco80``, ``voc20``, ``nuswide81``, ``vg500``, ``fashion10``)."""
    text = resources.files(__package__).joinpath("labels", f"{name}.txt").read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line)


def _weights_table() -> dict[str, _weights.WeightsRecord | None]:
    # SADCL_WEIGHTS_JSON points at another table (a private mirror of checkpoints, or a test's).
    return _weights.load_weights_table(os.environ.get("SADCL_WEIGHTS_JSON") or None)


def pretrained_cfg_for(name: str) -> dict[str, Any]:
    """The metadata of a variant, as attached to ``model.pretrained_cfg`` (cf. torchvision's ``meta``)."""
    return _pretrained_cfg(name, _weights_table().get(name))


def _pretrained_cfg(name: str, record: _weights.WeightsRecord | None) -> dict[str, Any]:
    cfg = VARIANTS[name]
    return dict(
        architecture=name, dataset=cfg.dataset, description=cfg.description,
        input_size=(3, cfg.img_size, cfg.img_size), train_size=cfg.train_size or cfg.img_size,
        mean=cfg.mean, std=cfg.std, interpolation=cfg.interpolation, resize="squash (Resize((s, s)))",
        label_names=list(read_labels(cfg.labels)), num_classes=len(read_labels(cfg.labels)),
        metrics=cfg.metrics, metrics_source=cfg.metrics_source, num_params=cfg.num_params,
        arch=dict(cfg.arch), weights=None if record is None else asdict(record),
        has_weights=record is not None,
        paper="Semantic-Aware Dual Contrastive Learning for Multi-label Image Classification (Ma et al., ECAI 2023)",
    )


def list_models(filter: str = "*") -> list[str]:
    """Names of all variants, optionally filtered with a wildcard pattern."""
    return sorted(n for n in VARIANTS if fnmatch.fnmatch(n, filter))


def list_pretrained(filter: str = "*") -> list[str]:
    """Names of the variants whose checkpoint is recorded in ``weights.json``."""
    table = _weights_table()
    return [n for n in list_models(filter) if table.get(n) is not None]


def _check_name(name: str) -> None:
    if name not in VARIANTS:
        close = difflib.get_close_matches(name, list(VARIANTS), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"Unknown SADCL model {name!r}.{hint} Available: {', '.join(list_models())}.")


def create_model(
    name: str,
    pretrained: bool = False,
    *,
    checkpoint_path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    **kwargs: Any,
) -> SADCL:
    """Build a registered SADCL variant, optionally with its verified checkpoint.

    ``name`` may also be ``"hf-hub:ORG/REPO[@revision]"`` or a folder written by ``sadcl export``.

    ``kwargs`` override any :class:`SADCL` constructor keyword (``backbone``, ``hidden_dim``, ``label_names`` …).
    With ``num_classes``/``label_names`` different from the checkpoint, everything else loads strictly and only
    the label-specific parameters are re-initialised.
    """
    from .export import is_exported_name, load_exported

    for key in ("pretrained_cfg", "pretrained_cfg_overlay"):  # passed by timm.create_model; ours is the table
        kwargs.pop(key, None)
    if is_exported_name(name):  # hf-hub:ORG/REPO[@rev], local-dir:PATH, or an export folder
        if checkpoint_path is not None:
            raise TypeError("checkpoint_path cannot be combined with an hf-hub:/local-dir:/folder model name")
        return load_exported(name, cache_dir=cache_dir, **kwargs)
    _check_name(name)
    unknown = sorted(set(kwargs) - set(_CONSTRUCTOR_KEYS))
    if unknown:
        raise TypeError(f"create_model({name!r}) got unknown keyword(s) {unknown}; valid: {list(_CONSTRUCTOR_KEYS)}")
    cfg = VARIANTS[name]
    args: dict[str, Any] = dict(cfg.arch, img_size=cfg.img_size, label_names=list(read_labels(cfg.labels)))
    if "num_classes" in kwargs and "label_names" not in kwargs:
        if kwargs["num_classes"] != len(args["label_names"]):
            args.pop("label_names")  # a new label set of that size, named by index
    args.update(kwargs)
    loading = pretrained or checkpoint_path is not None
    state_dict = metadata = path = None
    record = _weights_table().get(name)
    if loading:
        args["pretrained_backbone"] = False  # the checkpoint holds the backbone too: download nothing extra
        if record is None and checkpoint_path is None:
            raise _weights.NoPretrainedWeightsError(
                f"No checkpoint has been published for {name!r} (the authors released none, and weights.json has "
                f"no record for it). Variants with weights: {', '.join(list_pretrained()) or 'none'}. To get weights "
                f"for {name!r}: fine-tune one (`sadcl train`, see README), convert an authors'/Query2Label checkpoint "
                f"(`sadcl convert`), or pass checkpoint_path= to a file you have."
            )
        path = _weights.resolve_checkpoint(record, variant=name, cache_dir=cache_dir, checkpoint_path=checkpoint_path)
        state_dict, metadata = _weights.read_safetensors(path)
    # When the checkpoint will overwrite every parameter, build on the meta device and assign its tensors:
    # initialising ~200 M random weights first would cost most of the loading time.
    same_head = loading and same_label_set(state_dict, metadata, resolve_labels(args.get("num_classes"),
                                                                                args.get("label_names")))
    with torch.device("meta") if same_head else contextlib.nullcontext():
        model = SADCL(**args)

    meta = _pretrained_cfg(name, record)  # the record read above: weights.json once per call
    size = model.config["img_size"]
    meta.update(input_size=(3, size, size), label_names=model.label_names, num_classes=model.num_classes)
    if kwargs:  # overrides change the architecture or the label set: count what was built
        meta["num_params"] = sum(p.numel() for p in model.parameters())
    model.pretrained_cfg = meta
    if loading:
        load_pretrained(model, state_dict, metadata, source=str(path), assign=same_head)
    return model


def _make_factory(name: str):
    def factory(pretrained: bool = False, **kwargs: Any) -> SADCL:
        return create_model(name, pretrained, **kwargs)

    factory.__name__ = factory.__qualname__ = name
    cfg = VARIANTS[name]
    factory.__doc__ = (
        f"SADCL {cfg.dataset} at {cfg.img_size} px. {cfg.description}\n\n"
        f"Args:\n    pretrained: load the checkpoint recorded in weights.json (raises if none is published).\n"
        f"    **kwargs: any SADCL constructor keyword as an override, plus checkpoint_path= and cache_dir=."
    )
    factory.__module__ = __name__
    return factory


for _name in VARIANTS:
    globals()[_name] = register_model(_make_factory(_name))
