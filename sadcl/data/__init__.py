"""Data: robust image loading, multi-label datasets, the recipe's transforms, Fashion-MNIST mosaics."""
from .datasets import (
    VOC_CLASSES,
    CocoDataset,
    CSVDataset,
    FolderDataset,
    MultiLabelDataset,
    VOCDataset,
    encode_labels,
    make_label_names,
    read_label_names,
    write_label_names,
)
from .images import ImageLoadError, check_image, load_image, to_rgb
from .mosaic import (
    DEFAULT_FASHION_ROOT,
    FASHION_LABELS,
    MosaicDataset,
    load_fashion_mnist,
    make_mosaics,
    mosaic_to_pil,
    write_mosaics,
)
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RANDAUGMENT_OPS,
    CutoutPIL,
    MultiScaleCrop,
    RandAugment,
    eval_transform,
    train_transform,
)

__all__ = [
    "ImageLoadError", "load_image", "to_rgb", "check_image",
    "MultiLabelDataset", "CSVDataset", "CocoDataset", "VOCDataset", "FolderDataset", "VOC_CLASSES",
    "read_label_names", "write_label_names", "make_label_names", "encode_labels",
    "IMAGENET_MEAN", "IMAGENET_STD", "RANDAUGMENT_OPS", "MultiScaleCrop", "CutoutPIL", "RandAugment",
    "eval_transform", "train_transform",
    "FASHION_LABELS", "DEFAULT_FASHION_ROOT", "load_fashion_mnist", "make_mosaics", "mosaic_to_pil",
    "MosaicDataset", "write_mosaics",
]
