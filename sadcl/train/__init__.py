"""Everything only fine-tuning needs: the paper's losses, the memory bank and prototypes, the training loop."""
from .losses import AsymmetricLoss, PrototypeContrastiveLoss, SADCLCriterion, SampleContrastiveLoss
from .memory import MemoryBank, compute_prototypes, init_prototypes_

__all__ = ["AsymmetricLoss", "MemoryBank", "PrototypeContrastiveLoss", "SADCLCriterion", "SampleContrastiveLoss",
           "compute_prototypes", "init_prototypes_"]
