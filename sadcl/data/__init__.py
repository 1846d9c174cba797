"""Data: robust image loading, multi-label datasets, the recipe's transforms, Fashion-MNIST mosaics."""

from __future__ import annotations

from .._lazy import lazy_attributes

# Loaded on first use: image loading and the datasets import torch; `sadcl.data.preprocessing` (which the variant
# table needs) stays light.
_OWNERS = {
    ".datasets": (
        "VOC_CLASSES",
        "CocoDataset",
        "CSVDataset",
        "FolderDataset",
        "MultiLabelDataset",
        "VOCDataset",
        "encode_labels",
        "make_label_names",
        "read_label_names",
        "write_label_names",
    ),
    ".images": ("ImageLoadError", "check_image", "load_image", "to_rgb"),
    ".layouts": ("LAYOUTS", "LayoutError", "LayoutReport", "SplitReport", "check_layout", "load_split"),
    ".mosaic": (
        "DEFAULT_FASHION_ROOT",
        "FASHION_LABELS",
        "MosaicDataset",
        "load_fashion_mnist",
        "make_mosaics",
        "mosaic_to_pil",
        "write_mosaics",
    ),
    ".transforms": (
        "IMAGENET_MEAN",
        "IMAGENET_STD",
        "RANDAUGMENT_OPS",
        "CutoutPIL",
        "MultiScaleCrop",
        "RandAugment",
        "eval_transform",
        "train_transform",
    ),
}
_LAZY = {name: module for module, names in _OWNERS.items() for name in names}

__all__ = [name for names in _OWNERS.values() for name in names]

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())
