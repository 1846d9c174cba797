"""The SADCL network: fidelity to the authors' architecture (REFERENCE.md a), interface, freezing."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sadcl.model import SADCL, sine_position_encoding
from sadcl.model.transformer import Attention, DecoderLayer, EncoderLayer

SMALL = dict(backbone="resnet18", num_classes=5, hidden_dim=64, ffn_dim=64, proj_dim=32, img_size=64)


def reference_sine(h: int, w: int, d: int) -> torch.Tensor:
    """REFERENCE.md a.3, element by element."""
    f = d // 2
    pe = torch.zeros(d, h, w, dtype=torch.float64)
    for k in range(f):
        omega = 10000 ** (2 * (k // 2) / f)
        fn = math.sin if k % 2 == 0 else math.cos
        for i in range(1, h + 1):
            for j in range(1, w + 1):
                pe[k, i - 1, j - 1] = fn(i / (h + 1e-6) * 2 * math.pi / omega)
                pe[f + k, i - 1, j - 1] = fn(j / (w + 1e-6) * 2 * math.pi / omega)
    return pe


@pytest.mark.parametrize("h,w,d", [(4, 4, 16), (3, 5, 8), (14, 14, 32)])
def test_sine_position_encoding_matches_formula(h, w, d):
    ours = sine_position_encoding(h, w, d, dtype=torch.float64)
    assert torch.allclose(ours, reference_sine(h, w, d), atol=1e-12)


def test_attention_equals_torch_multihead_attention():
    torch.manual_seed(0)
    ours = Attention(32, 4).eval()
    ref = nn.MultiheadAttention(32, 4, batch_first=True).eval()
    ref.load_state_dict(ours.state_dict())  # identical packed key layout
    q, k = torch.randn(2, 5, 32), torch.randn(2, 7, 32)
    v = torch.randn(2, 7, 32)
    out, w = ours(q, k, v, need_weights=True)
    ref_out, ref_w = ref(q, k, v, need_weights=True, average_attn_weights=True)
    assert torch.allclose(out, ref_out, atol=1e-5)
    assert torch.allclose(w, ref_w, atol=1e-6)
    assert torch.allclose(ours(q, k, v)[0], ref_out, atol=1e-5)  # the SDPA path


def test_layers_are_post_norm_as_reference():
    torch.manual_seed(0)
    enc, dec = EncoderLayer(16, 2, 24, 0.0).eval(), DecoderLayer(16, 2, 24, 0.0).eval()
    src, pos = torch.randn(2, 6, 16), torch.randn(1, 6, 16)
    mha = nn.MultiheadAttention(16, 2, batch_first=True)
    mha.load_state_dict(enc.self_attn.state_dict())
    x = enc.norm1(src + mha(src + pos, src + pos, src)[0])
    expected = enc.norm2(x + enc.linear2(torch.relu(enc.linear1(x))))
    assert torch.allclose(enc(src, pos), expected, atol=1e-5)

    tgt, qpos = torch.zeros(2, 3, 16), torch.randn(2, 3, 16)
    mha.load_state_dict(dec.multihead_attn.state_dict())
    t = dec.norm2(tgt + mha(tgt + qpos, src + pos, src)[0])
    expected = dec.norm3(t + dec.linear2(torch.relu(dec.linear1(t))))
    assert torch.allclose(dec(tgt, src, pos, qpos)[0], expected, atol=1e-5)
    assert not hasattr(dec, "self_attn") and not hasattr(dec, "norm1")


@pytest.mark.slow
def test_interface_shapes():
    m = SADCL(**SMALL).eval()
    x = torch.randn(3, 3, 64, 64)
    h = m.forward_features(x)
    assert h.shape == (3, 5, 64)
    assert torch.equal(m.forward_head(h), m(x))
    assert m(x).shape == (3, 5)
    assert m.project(h).shape == (3, 5, 32)
    assert m.project(m.prototypes).shape == (5, 32)
    assert m.prototypes.shape == (5, 64) and m.prototypes.requires_grad
    # the decoder output is after the final LayerNorm: zero mean, unit variance per embedding
    assert torch.allclose(h.mean(-1), torch.zeros(3, 5), atol=1e-5)
    assert m.label_names == ["0", "1", "2", "3", "4"]


@pytest.mark.slow
def test_same_weights_run_at_other_resolution():
    m = SADCL(**SMALL).eval()
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, 5)
    assert m(torch.randn(1, 3, 96, 128)).shape == (1, 5)  # 3x4 grid: encoding computed for it
    assert not any(k.split(".")[-1] in ("pe", "pos", "pos_embed") for k in m.state_dict())


def test_key_layout_maps_to_authors_keys():
    m = SADCL(**SMALL)
    keys = set(m.state_dict())
    for k in [
        "transformer.encoder.layers.0.self_attn.in_proj_weight",
        "transformer.encoder.layers.0.norm2.bias",
        "transformer.decoder.layers.1.multihead_attn.out_proj.weight",
        "transformer.decoder.layers.0.norm3.weight",
        "transformer.decoder.norm.weight",
        "query_embed.weight",
        "fc.W",
        "fc.b",
        "proj_head.layers.0.weight",
        "proj_head.layers.1.bias",
        "prototypes",
        "backbone.layer4.1.bn2.running_var",
        "input_proj.weight",
    ]:
        assert k in keys, k
    assert m.state_dict()["transformer.encoder.layers.0.self_attn.in_proj_weight"].shape == (192, 64)
    assert not any(k.startswith("transformer.decoder.layers.0.self_attn") for k in keys)
    assert not any("num_batches_tracked" in k for k in keys)  # frozen BN, as the authors


def test_input_proj_only_when_channels_differ():
    assert isinstance(SADCL(**dict(SMALL, hidden_dim=512, ffn_dim=32)).input_proj, nn.Identity)
    assert isinstance(SADCL(**SMALL).input_proj, nn.Conv2d)


@pytest.mark.slow
def test_frozen_batchnorm_and_stem():
    m = SADCL(**SMALL)
    assert not any(isinstance(mod, nn.BatchNorm2d) for mod in m.modules())
    frozen = {n for n, p in m.named_parameters() if not p.requires_grad}
    assert "backbone.conv1.weight" in frozen and "backbone.layer1.1.conv2.weight" in frozen
    assert not any(n.startswith(("backbone.layer2", "backbone.layer4", "transformer")) for n in frozen)
    before = {k: v.clone() for k, v in m.state_dict().items() if "running" in k}
    m.train()(torch.randn(2, 3, 64, 64))
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())
    scratch = SADCL(**SMALL, freeze_bn=False, freeze_stem=False)
    assert all(p.requires_grad for p in scratch.parameters())


def test_reset_classifier_touches_only_label_parameters():
    torch.manual_seed(0)
    m = SADCL(**SMALL)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m.reset_classifier(3, ["cat", "dog", "fish"])
    after = m.state_dict()
    changed = {
        k for k in after if k not in before or after[k].shape != before[k].shape or not torch.equal(after[k], before[k])
    }
    assert changed == {"query_embed.weight", "fc.W", "fc.b", "prototypes"}
    assert m.label_names == ["cat", "dog", "fish"] and m.pretrained_cfg["label_names"] == ["cat", "dog", "fish"]
    assert m(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    with pytest.raises(ValueError, match="num_classes=2 but 3"):
        m.reset_classifier(2, ["a", "b", "c"])


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="not_a_model"):
        SADCL(backbone="not_a_model", num_classes=2)
    with pytest.raises(ValueError, match="unique"):
        SADCL(**dict(SMALL, num_classes=None, label_names=["a", "a"]))
    with pytest.raises(ValueError, match="divisible"):
        SADCL(**dict(SMALL, num_heads=3))


@pytest.mark.slow
def test_full_size_matches_authors_parameter_count():
    """ResNet-101 SADCL: 200,037,456 trainable parameters, as printed in the authors' logs."""
    m = SADCL(num_classes=80).eval()
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == 200_037_456
    with torch.inference_mode():
        assert m(torch.randn(1, 3, 448, 448)).shape == (1, 80)
        assert m(torch.randn(1, 3, 576, 576)).shape == (1, 80)
