"""Folding frozen BatchNorm into the convolutions: same function, same gradients, same keys."""

from __future__ import annotations

import copy

import pytest
import torch
from timm.layers.norm_act import FrozenBatchNorm2d

import sadcl
from sadcl.model.frozen_bn import FoldedFrozenBatchNorm2d, FrozenBNConv2d, fold_frozen_batch_norm


def _pair(variant: str = "sadcl_tiny", **kwargs):
    """An unfolded and a folded model with the same weights and non-trivial BatchNorm statistics."""
    torch.manual_seed(0)
    plain = sadcl.create_model(variant, fold_frozen_bn=False, dropout=0.0, **kwargs)
    folded = sadcl.create_model(variant, dropout=0.0, **kwargs)
    g = torch.Generator().manual_seed(1)
    state = plain.state_dict()
    for key, t in state.items():
        if key.endswith("running_var"):
            t.copy_(torch.rand(t.shape, generator=g) * 1.5 + 0.5)
        elif key.endswith("running_mean") or (key.startswith("backbone.") and "bn" in key):
            t.copy_(torch.randn(t.shape, generator=g) * 0.3 + (1.0 if key.endswith("weight") else 0.0))
    plain.load_state_dict(state)
    folded.load_state_dict(state, strict=True)
    return plain, folded


def test_every_resnet_batchnorm_is_folded_and_the_keys_stay():
    plain, folded = _pair()
    assert not any(isinstance(m, FrozenBNConv2d) for m in plain.modules())
    bns = [m for m in folded.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert bns and all(isinstance(m, FoldedFrozenBatchNorm2d) for m in bns)  # none left unfolded
    assert sum(isinstance(m, FrozenBNConv2d) for m in folded.modules()) == len(bns)
    assert list(plain.state_dict()) == list(folded.state_dict())


@pytest.mark.slow
@pytest.mark.parametrize("train", [False, True])
def test_same_outputs_and_gradients(train):
    plain, folded = _pair()
    plain.train(train), folded.train(train)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    out_p, out_f = plain(x), folded(x)
    assert torch.allclose(out_p, out_f, atol=1e-5, rtol=1e-5)
    out_p.square().sum().backward()
    out_f.square().sum().backward()
    grads_f = dict(folded.named_parameters())
    checked = 0
    for name, p in plain.named_parameters():
        if p.grad is None:
            assert grads_f[name].grad is None, name
            continue
        assert torch.allclose(p.grad, grads_f[name].grad, atol=1e-4, rtol=1e-3), name
        checked += "backbone.layer" in name and name.endswith("conv1.weight")
    assert checked > 0  # trainable backbone convolutions were compared


def test_changing_the_batchnorm_statistics_changes_the_folded_conv():
    # The convolution reads the statistics at call time, so loading a checkpoint after building takes effect.
    _, folded = _pair()
    folded.eval()
    x = torch.randn(1, 3, 64, 64)
    before = folded(x)
    with torch.no_grad():
        folded.backbone.layer4[0].bn1.running_var.mul_(4.0)
    assert not torch.allclose(before, folded(x))


def test_deepcopy_keeps_each_copy_on_its_own_statistics():
    # The EMA copy is a deepcopy: its convolutions must read its own BatchNorm, not the original's.
    _, folded = _pair()
    folded.eval()
    ema = copy.deepcopy(folded)
    conv = ema.backbone.layer4[0].conv1
    assert conv.__dict__["folded_bn"] is ema.backbone.layer4[0].bn1
    x = torch.randn(1, 3, 64, 64)
    reference = folded(x)
    with torch.no_grad():
        ema.backbone.layer4[0].bn1.running_var.mul_(4.0)
    assert torch.equal(folded(x), reference)


def test_other_backbones_and_trainable_batchnorm_are_left_alone():
    model = sadcl.create_model("sadcl_tiny", freeze_bn=False, freeze_stem=False)
    assert not any(isinstance(m, FrozenBNConv2d) for m in model.modules())
    assert fold_frozen_batch_norm(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), FrozenBatchNorm2d(4))) == 0
