"""torch.hub: hubconf.py exposes one documented entry point per variant and builds models from a local checkout.

torch 2.14's ``torch.hub.list``/``torch.hub.help`` accept only GitHub repositories (no ``source="local"``),
so listing is checked with the rule they apply to a hubconf module: its public callables.
"""

from __future__ import annotations

from pathlib import Path

import torch

import sadcl

REPO_DIR = str(Path(__file__).resolve().parents[1])


def _hubconf():
    from torch.hub import MODULE_HUBCONF, _import_module

    return _import_module(MODULE_HUBCONF, str(Path(REPO_DIR) / MODULE_HUBCONF))


def test_hubconf_entry_points_are_the_variants():
    hub = _hubconf()
    entries = sorted(f for f in dir(hub) if callable(getattr(hub, f)) and not f.startswith("_"))
    assert entries == sadcl.list_models()
    assert "COCO" in hub.sadcl_coco_448.__doc__
    assert {"torch", "timm", "huggingface_hub", "safetensors"} <= set(hub.dependencies)


def test_hub_load_local_with_overrides():
    model = torch.hub.load(
        REPO_DIR,
        "sadcl_coco_448",
        source="local",
        pretrained=False,
        backbone="test_resnet",
        hidden_dim=32,
        ffn_dim=32,
        proj_dim=16,
    )
    assert isinstance(model, sadcl.SADCL) and model.num_classes == 80
    assert model.label_names[0] == "person"
