"""sadcl: SADCL multi-label image classification (Ma et al., ECAI 2023) — model zoo, inference, fine-tuning.

>>> import sadcl
>>> model = sadcl.create_model("sadcl_fashion_mosaic", pretrained=True)
>>> sadcl.predict(model, "photo.png", top_k=3)
"""

from __future__ import annotations

__version__ = "0.1.0"

# The public names load on first use (PEP 562): `import sadcl` (and with it `sadcl --version`, `sadcl list`) does
# not import torch and timm; `from sadcl import create_model` works as before.
from ._lazy import lazy_attributes
from ._timm_registration import register_when_timm_loads

# name: the module that owns it
_LAZY = {
    "SADCL": ".model",
    "create_model": ".zoo.factory",
    "list_models": ".zoo.variants",
    "list_pretrained": ".zoo.variants",
    "create_transform": ".data.preprocessing",
    "attention_maps": ".inference",
    "predict": ".inference",
    "iter_predict": ".inference",
    "Prediction": ".inference",
    "MemoryBank": ".train.memory",
    "load_official_checkpoint": ".zoo.convert",
}

__all__ = [
    "SADCL",
    "MemoryBank",
    "Prediction",
    "__version__",
    "attention_maps",
    "create_model",
    "create_transform",
    "iter_predict",
    "list_models",
    "list_pretrained",
    "load_official_checkpoint",
    "predict",
]

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())

# timm.create_model("sadcl_…") works after `import sadcl`: registered now if timm is loaded, else once it is.
register_when_timm_loads()
