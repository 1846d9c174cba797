"""What turns the SADCL network into a model zoo: variants, verified weights, loading."""
from .variants import VARIANTS, create_model, list_models, list_pretrained, pretrained_cfg_for, read_labels

__all__ = ["VARIANTS", "create_model", "list_models", "list_pretrained", "pretrained_cfg_for", "read_labels"]
