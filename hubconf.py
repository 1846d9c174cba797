"""torch.hub entry points: one per SADCL variant.

    model = torch.hub.load("<repo or dir>", "sadcl_coco_448", source="local", pretrained=False)
"""
dependencies = ["torch", "timm", "huggingface_hub", "safetensors", "PIL"]

from sadcl.zoo import variants as _variants  # noqa: E402


def _entry(name):
    def entry(pretrained: bool = False, **kwargs):
        return _variants.create_model(name, pretrained, **kwargs)

    entry.__name__ = name
    entry.__doc__ = _variants._make_factory(name).__doc__
    return entry


sadcl_coco_448 = _entry("sadcl_coco_448")
sadcl_coco_576 = _entry("sadcl_coco_576")
sadcl_voc2007_448 = _entry("sadcl_voc2007_448")
sadcl_voc2012_448 = _entry("sadcl_voc2012_448")
sadcl_nuswide_448 = _entry("sadcl_nuswide_448")
sadcl_vg500_576 = _entry("sadcl_vg500_576")
sadcl_fashion_mosaic = _entry("sadcl_fashion_mosaic")
sadcl_tiny = _entry("sadcl_tiny")
