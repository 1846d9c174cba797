"""The authors' settings for reproducing each paper checkpoint, as data, each with where it comes from.

``REFERENCE`` means ``shared/docs/REFERENCE.md`` (our line-by-line study of the authors' code and logs); the
poster is ``shared/paper`` (the result tables). Nothing here imports torch: ``sadcl reproduce --help`` and the
dry-run's arithmetic read these tables only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "AUTHORS_EPOCHS",
    "COMMON",
    "DATASETS",
    "EVAL_FORWARD_SHARE",
    "MEASURED_STEP",
    "OVERRIDES",
    "RELEASE_SIZES",
    "STEPS",
    "DatasetRecipe",
    "Setting",
]


@dataclass(frozen=True)
class Setting:
    """One recipe value and where it comes from."""

    value: Any
    source: str


# Both steps (TrainConfig keywords).
COMMON: dict[str, Setting] = {
    "batch_size": Setting(64, "REFERENCE d.1: --batch-size 64 is the global batch (2 GPUs x 32)"),
    "epochs": Setting(80, "REFERENCE d.1/d.2: OneCycle over 80 epochs nominal; early stopping ends the run"),
    "patience": Setting(8, "REFERENCE d.1: stop when 8 epochs passed without a better EMA mAP"),
    "lr": Setting(5e-5, "REFERENCE d.1: AdamW lr 5e-5, one parameter group"),
    "weight_decay": Setting(5e-3, "REFERENCE d.1"),
    "pct_start": Setting(0.2, "REFERENCE d.1: OneCycleLR pct_start 0.2, stepped every iteration"),
    "ema_decay": Setting(0.9998, "REFERENCE d.1: ModelEma decay 0.9998 from epoch 0"),
    "seed": Setting(1, "REFERENCE d.1: --seed 1"),
    "amp": Setting(
        "bf16",
        "REFERENCE d.1: the authors trained under fp16 autocast with a GradScaler; bf16 autocast is sadcl's "
        "mixed precision (no loss scaling needed) and what the GPU rate was measured with",
    ),
    "threshold": Setting(0.5, "REFERENCE d.4: CP/CR/CF1/OP/OR/OF1 at score > 0.5 (the paper does not state it)"),
}

# Per step (TrainConfig keywords); the step's starting point is in DatasetRecipe.
STEPS: dict[str, dict[str, Setting]] = {
    "step1": {
        "objective": Setting("asl", "REFERENCE d.2: step 1 is the Query2Label baseline, asymmetric loss only"),
        "gamma_neg": Setting(4.0, "REFERENCE d.2: ASL gamma- 4, gamma+ 0, clip 0"),
        "augment": Setting("baseline", "REFERENCE d.2: Cutout (224 px hole) + RandAugment, no crop"),
    },
    "step2": {
        "objective": Setting("sadcl", "REFERENCE d.3: ASL + 100 SSCL + 50 PSCL with the memory bank"),
        "loss_weights": Setting((1.0, 100.0, 50.0), "REFERENCE d.3"),
        "gamma_neg": Setting(
            0.0, "REFERENCE d.3: the released run's config and log have gamma_neg 0 (the script coco.sh says 4)"
        ),
        "augment": Setting("sadcl", "REFERENCE d.3: --crop: multi-scale crop (512 -> 448) + horizontal flip"),
        "sample_temperature": Setting(0.2, "REFERENCE c.2: MultiSupCon temperature 0.2"),
        "prototype_temperature": Setting(0.07, "REFERENCE c.3: Sem2Pro temperature 0.07"),
        "memory_threshold": Setting(0.8, "REFERENCE a.9: bank rows replaced where label = 1 and score > 0.8"),
    },
}


@dataclass(frozen=True)
class DatasetRecipe:
    """What differs between datasets: the variant produced (its resolution and labels live in
    :data:`sadcl.zoo.variants.VARIANTS`) and where step 1 starts."""

    variant: str
    init: str  # "imagenet": an ImageNet ResNet-101 trunk; "coco": the COCO model (sadcl reproduce coco2014)
    source: str
    note: str = ""


DATASETS: dict[str, DatasetRecipe] = {
    "coco2014": DatasetRecipe(
        "sadcl_coco_448",
        "imagenet",
        "REFERENCE d.2 (ImageNet R101 -> Q2L), poster COCO table (448, 448)",
        "the same weights evaluated at 576 px are sadcl_coco_576 (authors' README image: sadcl eval --img-size 576)",
    ),
    "voc2007": DatasetRecipe(
        "sadcl_voc2007_448",
        "coco",
        "poster VOC 2007 table: SADCL is marked as pre-trained on MS-COCO; 448 px",
        "trained on VOC2007 trainval, evaluated on VOC2007 test (REFERENCE e)",
    ),
    "voc2012": DatasetRecipe(
        "sadcl_voc2012_448",
        "coco",
        "REFERENCE e (VOC2012 trainval, validated on VOC2007 test); COCO initialisation as for VOC 2007 "
        "(assumed: the poster has no VOC 2012 table)",
        "validated on VOC2007 test as the authors do (REFERENCE e)",
    ),
    "nuswide": DatasetRecipe(
        "sadcl_nuswide_448",
        "imagenet",
        "poster NUS-WIDE table: 448 x 448 in training and testing",
        "images without any of the 81 labels are dropped, as the authors do (REFERENCE e)",
    ),
    "vg500": DatasetRecipe(
        "sadcl_vg500_576",
        "imagenet",
        "REFERENCE e: VG-500 (C-Tran split); the authors' VG-500 prototype is the 576-px one",
        "500 labels by index (the names were never published)",
    ),
}

# Flags a user may change (TrainConfig keywords); any of them given makes the run "not the paper's recipe",
# except the run settings, which change where and how fast it runs, not what it computes.
OVERRIDES: tuple[str, ...] = ("epochs", "batch_size", "model", "img_size", "amp", "pretrained_backbone", "patience")
RUN_SETTINGS: tuple[str, ...] = ("num_workers", "device")

# Images per split of the official releases, for a dry run before the data is on disk (no --data-root).
RELEASE_SIZES: dict[str, Setting] = {
    "coco2014": Setting(
        {"train": 82_783, "val": 40_504},
        "REFERENCE e: all train2014/val2014 images (the authors' logged 1293 iterations of 64 per epoch agree)",
    ),
    "voc2007": Setting({"train": 5_011, "val": 4_952}, "VOC2007 devkit: trainval 5,011 and test 4,952 images"),
    "voc2012": Setting(
        {"train": 11_540, "val": 4_952}, "VOC2012 devkit: classification trainval 11,540; validated on VOC2007 test"
    ),
    "nuswide": Setting(
        {"train": 161_789, "val": 107_859},
        "NUS-WIDE image lists (161,789 / 107,859) before images without a label are dropped: an upper bound",
    ),
    "vg500": Setting({"train": 98_249, "val": 10_000}, "the SSGRL/C-Tran VG-500 split: 98,249 train, 10,000 test"),
}

# The authors' runs stopped early (REFERENCE f): step 1 (Q2L) after epoch index 28, step 2 (SADCL) after 20.
AUTHORS_EPOCHS: dict[str, Setting] = {
    "step1": Setting(29, "REFERENCE f: the Q2L COCO run early-stopped at epoch 28 (best EMA mAP at epoch 19)"),
    "step2": Setting(21, "REFERENCE f: the SADCL COCO run early-stopped at epoch 20 (best EMA mAP at epoch 11)"),
}

# The measured training step the dry-run scales (a copy: benchmarks/ is not installed with the package;
# tests/test_reproduce.py checks every figure against the JSON file so the two cannot drift apart).
MEASURED_STEP: dict[str, Any] = {
    "file": "benchmarks/results/train_gpu.json",
    "command": "python benchmarks/bench_train_gpu.py",
    "date_utc": "2026-11-26T21:53:32Z",
    "gpu": "NVIDIA H100 80GB HBM3",
    "torch": "2.11.0+cu130",
    "model": "sadcl_coco_448",
    "img_size": 448,
    "batch": 32,
    "config": "ours: eager, bf16 autocast, channels_last, ASL + 100 SSCL + 50 PSCL with the memory bank, AdamW",
    "step_s": 0.0589526459999945,
    "images_per_s": 542.8085450142981,
    "static_mib": 3078.2392387390137,
    "step_extra_peak_mib": 4455.720703125,
    "total_peak_mib": 7533.959941864014,
}

# Evaluation runs the forward pass only: taken as a third of a training step (forward + backward ~ 3 forwards).
# An assumption, not a measurement: no GPU inference rate of the ResNet-101 model was recorded.
EVAL_FORWARD_SHARE = 1 / 3
