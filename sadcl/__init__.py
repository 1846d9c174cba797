"""sadcl: SADCL multi-label image classification (Ma et al., ECAI 2023) — model zoo, inference, fine-tuning.

>>> import sadcl
>>> model = sadcl.create_model("sadcl_fashion_mosaic", pretrained=True)
>>> sadcl.predict(model, "photo.png", top_k=3)
"""
__version__ = "0.1.0"

from .model import SADCL
from .zoo import create_model, list_models, list_pretrained
from .data.preprocessing import create_transform
from .inference import attention_maps, predict
from .train.memory import MemoryBank
from .zoo.convert import load_official_checkpoint

__all__ = ["SADCL", "MemoryBank", "__version__", "attention_maps", "create_model", "create_transform", "list_models", "list_pretrained",
           "load_official_checkpoint", "predict"]
