"""What turns the SADCL network into a model zoo: the variant registry, one factory for every source,
self-describing weights files, verified downloads, export and publishing."""
from .factory import create_model
from .variants import VARIANTS, list_models, list_pretrained, pretrained_cfg_for, read_labels

__all__ = ["VARIANTS", "create_model", "list_models", "list_pretrained", "pretrained_cfg_for", "read_labels"]
