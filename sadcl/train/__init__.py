"""Everything only fine-tuning needs: the paper's losses, the memory bank and prototypes, the training loop.

The losses and the memory bank load with the package; the training loop's names (``Trainer``, ``TrainConfig``,
``train``, ``evaluate_model`` …) load on first use, so ``import sadcl`` stays light.
"""

from __future__ import annotations

from .._lazy import lazy_attributes
from .losses import AsymmetricLoss, PrototypeContrastiveLoss, SADCLCriterion, SampleContrastiveLoss
from .memory import MemoryBank, compute_prototypes, init_prototypes_

# name: the module of this package that owns it (loaded when first asked for)
_LAZY = {
    "ConfigError": ".config",
    "InexactResumeWarning": ".config",
    "RunFinishedError": ".config",
    "TrainConfig": ".config",
    "DataSpec": ".data",
    "build_dataset": ".data",
    "EarlyStopping": ".early_stopping",
    "evaluate_checkpoint": ".evaluation",
    "evaluate_model": ".evaluation",
    "load_model": ".models",
    "config_from_options": ".options",
    "NonFiniteLossError": ".trainer",
    "Trainer": ".trainer",
    "train": ".trainer",
}

__all__ = [
    "AsymmetricLoss",
    "MemoryBank",
    "PrototypeContrastiveLoss",
    "SADCLCriterion",
    "SampleContrastiveLoss",
    "compute_prototypes",
    "init_prototypes_",
    *sorted(_LAZY),
]


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())
