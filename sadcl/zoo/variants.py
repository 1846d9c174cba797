"""The variant table: dataset, resolution, label set, preprocessing, paper metrics. A pure registry.

This module only describes variants; :mod:`sadcl.zoo.factory` builds them (and registers them with timm),
so nothing here imports the factory, the export code or the Hub.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from ..data.labels import read_labels
from ..data.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from . import weights as _weights

_POSTER = "Ma et al., ECAI 2023, poster tables (shared/paper); not re-run here"
_PAPER_ARCH = dict(
    backbone="resnet101.tv_in1k",
    hidden_dim=2048,
    ffn_dim=8192,
    num_heads=4,
    num_encoder_layers=1,
    num_decoder_layers=2,
    dropout=0.1,
    proj_dim=1024,
)
PAPER = "Semantic-Aware Dual Contrastive Learning for Multi-label Image Classification (Ma et al., ECAI 2023)"
PAPER_IDS = "arXiv:2307.09715"


@dataclass(frozen=True)
class VariantCfg:
    """What a variant is: architecture, label set, preprocessing and the paper's results."""

    dataset: str
    labels: str  # a packaged label set (sadcl/data/labels/)
    img_size: int
    description: str
    arch: dict[str, Any] = field(default_factory=lambda: dict(_PAPER_ARCH))
    metrics: dict[str, float] | None = None  # the paper's (or our measured) results, in percent
    metrics_source: str | None = None
    train_size: int | None = None  # resolution used for training when it differs from evaluation
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    num_params: int | None = None  # of the default architecture, checked by the tests

    @property
    def preprocessing(self) -> Preprocessing:
        """Evaluation preprocessing: squash-resize to ``img_size``, normalise with ``mean``/``std``."""
        return Preprocessing.square(self.img_size, mean=self.mean, std=self.std, interpolation=self.interpolation)

    def constructor_args(self) -> dict[str, Any]:
        """The :class:`sadcl.model.SADCL` keywords that build this variant."""
        return dict(self.arch, img_size=self.img_size, label_names=list(read_labels(self.labels)))


VARIANTS: dict[str, VariantCfg] = {
    "sadcl_coco_448": VariantCfg(
        dataset="MS-COCO 2014",
        labels="coco80",
        img_size=448,
        num_params=200_259_856,
        description="ResNet-101, trained and evaluated at 448 px on COCO-2014 (80 labels, category-id order).",
        metrics={
            "mAP": 85.6,
            "CP": 84.6,
            "CR": 76.0,
            "CF1": 79.8,
            "OP": 86.0,
            "OR": 78.5,
            "OF1": 82.1,
            "CP_top3": 88.9,
            "CR_top3": 66.6,
            "CF1_top3": 74.9,
            "OP_top3": 91.0,
            "OR_top3": 68.3,
            "OF1_top3": 78.0,
        },
        metrics_source=_POSTER + ", MS-COCO table, (448, 448)",
    ),
    "sadcl_coco_576": VariantCfg(
        dataset="MS-COCO 2014",
        labels="coco80",
        img_size=576,
        train_size=448,
        num_params=200_259_856,
        description="The COCO model trained at 448 px and evaluated at 576 px (same weights as sadcl_coco_448).",
        metrics={"mAP": 86.8, "CF1": 81.1, "OF1": 83.2},
        metrics_source="authors' README results image (image/coco.png), (448, 576); not re-run here",
    ),
    "sadcl_voc2007_448": VariantCfg(
        dataset="PASCAL VOC 2007",
        labels="voc20",
        img_size=448,
        num_params=199_891_156,
        description="ResNet-101 at 448 px on VOC 2007 trainval (20 labels), initialised from COCO.",
        metrics={"mAP": 96.4},
        metrics_source=_POSTER + ", VOC 2007 table",
    ),
    "sadcl_voc2012_448": VariantCfg(
        dataset="PASCAL VOC 2012",
        labels="voc20",
        img_size=448,
        num_params=199_891_156,
        description="ResNet-101 at 448 px on VOC 2012 trainval (20 labels); the authors validate on VOC 2007 test.",
        metrics=None,
        metrics_source="reported in arXiv 2307.09715, not recovered here",
    ),
    "sadcl_nuswide_448": VariantCfg(
        dataset="NUS-WIDE",
        labels="nuswide81",
        img_size=448,
        num_params=200_266_001,
        description="ResNet-101 at 448 px on NUS-WIDE (81 concepts, alphabetical order).",
        metrics={"mAP": 65.9, "CF1": 63.0, "OF1": 75.0, "CF1_top3": 57.8, "OF1_top3": 70.6},
        metrics_source=_POSTER + ", NUS-WIDE table (split not stated)",
    ),
    "sadcl_vg500_576": VariantCfg(
        dataset="Visual Genome 500",
        labels="vg500",
        img_size=576,
        num_params=202_840_756,
        description="ResNet-101 at 576 px on VG-500 (500 labels by index: the names were never published).",
        metrics=None,
        metrics_source="reported in arXiv 2307.09715, not recovered here",
    ),
    "sadcl_fashion_mosaic": VariantCfg(
        dataset="Fashion-MNIST 2x2 mosaics",
        labels="fashion10",
        img_size=56,
        num_params=5_414_466,
        description=(
            "The default model: a ResNet-10-T SADCL trained from scratch by sadcl on multi-label "
            "Fashion-MNIST mosaics (56x56, 10 labels); its checkpoint ships inside the package."
        ),
        arch=dict(
            backbone="resnet10t",
            hidden_dim=128,
            ffn_dim=256,
            num_heads=4,
            num_encoder_layers=1,
            num_decoder_layers=2,
            dropout=0.1,
            proj_dim=64,
            freeze_bn=False,
            freeze_stem=False,
        ),
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        metrics={
            "mAP": 95.91,
            "mAP_sklearn": 95.9,
            "CP": 92.22,
            "CR": 90.1,
            "CF1": 91.11,
            "OP": 92.31,
            "OR": 90.03,
            "OF1": 91.16,
            "CF1_top3": 90.51,
            "OF1_top3": 90.62,
        },
        metrics_source=(
            "measured by sadcl on 10,000 test mosaics (Fashion-MNIST test split, seed 2) with the packaged "
            "float16 weights: benchmarks/results/fashion_model.json, from "
            "`python benchmarks/package_fashion_model.py runs/fashion/step2`"
        ),
    ),
    "sadcl_tiny": VariantCfg(
        dataset="none (tests and demos)",
        labels="voc20",
        img_size=64,
        num_params=487_460,
        description="A tiny network (timm test_resnet, width 64) with the VOC-20 label set, for tests and demos.",
        arch=dict(
            backbone="test_resnet",
            hidden_dim=64,
            ffn_dim=128,
            num_heads=4,
            num_encoder_layers=1,
            num_decoder_layers=2,
            dropout=0.1,
            proj_dim=32,
        ),
    ),
}


def weights_table() -> dict[str, _weights.WeightsRecord | None]:
    """The checkpoint records (``weights.json``, or the table ``SADCL_WEIGHTS_JSON`` points at: a private mirror
    of checkpoints, or a test's)."""
    return _weights.load_weights_table(os.environ.get("SADCL_WEIGHTS_JSON") or None)


def pretrained_cfg_for(name: str) -> dict[str, Any]:
    """The metadata of a variant, as attached to ``model.pretrained_cfg`` (cf. torchvision's ``meta``)."""
    return variant_pretrained_cfg(name, weights_table().get(name))


def variant_pretrained_cfg(name: str, record: _weights.WeightsRecord | None) -> dict[str, Any]:
    """``pretrained_cfg`` of variant ``name`` with checkpoint ``record``: timm's keys (input size, mean, std,
    interpolation, crop_pct, crop_mode, num_classes, label_names) plus the paper's results and their source."""
    check_name(name)
    cfg = VARIANTS[name]
    labels = list(read_labels(cfg.labels))
    return dict(
        architecture=name,
        variant=name,
        source=name if record is not None else None,
        dataset=cfg.dataset,
        description=cfg.description,
        **cfg.preprocessing.to_cfg(),
        fixed_input_size=False,
        train_size=cfg.train_size or cfg.img_size,
        label_names=labels,
        num_classes=len(labels),
        classifier="fc",
        metrics=cfg.metrics,
        metrics_source=cfg.metrics_source,
        num_params=cfg.num_params,
        arch=dict(cfg.arch),
        weights=None if record is None else asdict(record),
        has_weights=record is not None,
        paper=PAPER,
        paper_ids=PAPER_IDS,
    )


def list_models(filter: str = "*") -> list[str]:
    """Names of all variants, optionally filtered with a wildcard pattern."""
    return sorted(n for n in VARIANTS if fnmatch.fnmatch(n, filter))


def list_pretrained(filter: str = "*") -> list[str]:
    """Names of the variants whose checkpoint is recorded in ``weights.json``."""
    table = weights_table()
    return [n for n in list_models(filter) if table.get(n) is not None]


def check_name(name: str) -> None:
    """Raise ``ValueError`` naming close matches when ``name`` is not a variant."""
    if name not in VARIANTS:
        close = difflib.get_close_matches(str(name), list(VARIANTS), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"Unknown SADCL model {name!r}.{hint} Available: {', '.join(list_models())}.")


def variant_of(config: dict[str, Any]) -> str | None:
    """The variant whose architecture, resolution and label set ``config`` (a constructor config) has exactly."""
    for name, v in VARIANTS.items():
        if (
            all(config.get(k) == value for k, value in v.arch.items())
            and config.get("img_size") == v.img_size
            and list(config.get("label_names") or []) == list(read_labels(v.labels))
        ):
            return name
    return None
