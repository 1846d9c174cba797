"""The SADCL network: knows nothing of files, the Hub or training."""

from __future__ import annotations

from .position import sine_position_encoding
from .sadcl import CONSTRUCTOR_KEYS, LABEL_SPECIFIC_KEYS, SADCL, GroupWiseLinear, ProjectionHead

__all__ = [
    "SADCL",
    "CONSTRUCTOR_KEYS",
    "GroupWiseLinear",
    "ProjectionHead",
    "LABEL_SPECIFIC_KEYS",
    "sine_position_encoding",
]
