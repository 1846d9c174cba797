"""The SADCL network: knows nothing of files, the Hub or training."""
from .sadcl import CONSTRUCTOR_KEYS, LABEL_SPECIFIC_KEYS, SADCL, GroupWiseLinear, ProjectionHead
from .position import sine_position_encoding

__all__ = ["SADCL", "CONSTRUCTOR_KEYS", "GroupWiseLinear", "ProjectionHead", "LABEL_SPECIFIC_KEYS",
           "sine_position_encoding"]
