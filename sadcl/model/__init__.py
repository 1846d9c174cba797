"""The SADCL network: knows nothing of files, the Hub or training."""
from .sadcl import SADCL, GroupWiseLinear, LABEL_SPECIFIC_KEYS, ProjectionHead
from .position import sine_position_encoding

__all__ = ["SADCL", "GroupWiseLinear", "ProjectionHead", "LABEL_SPECIFIC_KEYS", "sine_position_encoding"]
