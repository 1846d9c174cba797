"""What turns the SADCL network into a model zoo: the variant registry, one factory for every source,
self-describing weights files, verified downloads, export and publishing."""

from __future__ import annotations

from .._lazy import lazy_attributes

# Loaded on first use: the variant table is light, the factory imports torch and timm (`sadcl list` needs only
# the table).
_LAZY = {
    "create_model": ".factory",
    **{
        name: ".variants"
        for name in ("VARIANTS", "list_models", "list_pretrained", "pretrained_cfg_for", "read_labels")
    },
}

__all__ = ["VARIANTS", "create_model", "list_models", "list_pretrained", "pretrained_cfg_for", "read_labels"]

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())
