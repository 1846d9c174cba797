"""torch.hub entry points: one per SADCL variant.

model = torch.hub.load("<repo or dir>", "sadcl_coco_448", source="local", pretrained=False)
"""

from __future__ import annotations

dependencies = ["torch", "timm", "huggingface_hub", "safetensors", "PIL"]

# The registered factories themselves (documented, one per variant); tests check this list is complete.
from sadcl.zoo.factory import (  # noqa: E402,F401
    sadcl_coco_448,
    sadcl_coco_576,
    sadcl_fashion_mosaic,
    sadcl_nuswide_448,
    sadcl_tiny,
    sadcl_vg500_576,
    sadcl_voc2007_448,
    sadcl_voc2012_448,
)
