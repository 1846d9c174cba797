"""Frozen BatchNorm folded into the convolution before it (ResNet backbones).

With BatchNorm frozen (the recipe), ``bn(conv(x, W)) = conv(x, W·s) + t`` per output channel, with
``s = γ / √(σ² + ε)`` and ``t = β − μ·s``. Computing ``W·s`` (a weight-sized product) instead of ``x·s + t``
(two passes over every activation, which under autocast also come out in float32 because the BatchNorm
statistics are float32) is the same function and the same gradients for ``W``, with fewer kernels and
bytes per step (``benchmarks/bench_train_gpu.py``).

The module tree and the ``state_dict`` keys are unchanged: each folded BatchNorm keeps its buffers at its
place (checkpoints, the authors' key mapping and strict loading see no difference) and becomes an
identity in the forward pass; the convolution reads the statistics through a reference to it.
"""

from __future__ import annotations

from timm.layers.norm_act import FrozenBatchNorm2d  # torchvision's class, as freeze_batch_norm_2d makes
from timm.models.resnet import ResNet
from torch import Tensor, nn

__all__ = ["FoldedFrozenBatchNorm2d", "FrozenBNConv2d", "fold_frozen_batch_norm"]


class FoldedFrozenBatchNorm2d(FrozenBatchNorm2d):
    """A frozen BatchNorm whose affine map is applied by the convolution before it: identity forward."""

    def scale_shift(self) -> tuple[Tensor, Tensor]:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return scale, self.bias - self.running_mean * scale

    def forward(self, x: Tensor) -> Tensor:
        return x


class FrozenBNConv2d(nn.Conv2d):
    """``conv(x, W·s) + t`` where ``s, t`` come from the (unregistered) folded BatchNorm that follows it."""

    def forward(self, x: Tensor) -> Tensor:
        scale, shift = self.__dict__["folded_bn"].scale_shift()
        weight = self.weight * scale.reshape(-1, 1, 1, 1)
        bias = shift if self.bias is None else self.bias * scale + shift
        return self._conv_forward(x, weight, bias)


def _fold_pair(conv: nn.Module, bn: nn.Module) -> bool:
    if type(conv) is not nn.Conv2d or type(bn) is not FrozenBatchNorm2d or conv.out_channels != bn.weight.numel():
        return False
    conv.__class__ = FrozenBNConv2d
    bn.__class__ = FoldedFrozenBatchNorm2d
    # A plain attribute, not a submodule: the BatchNorm stays in the tree (and state_dict) at its own place.
    conv.__dict__["folded_bn"] = bn
    return True


def fold_frozen_batch_norm(backbone: nn.Module) -> int:
    """Fold every frozen BatchNorm of a timm ResNet that directly follows a convolution; returns how many.

    Only timm's ``ResNet`` is handled, where the data flow is known from the module names: ``convN → bnN``
    in every block, ``Sequential(…, conv, bn)`` in downsampling paths, and the stem's last convolution
    → ``bn1``. Other backbones are left as they are (0 folded).
    """
    if not isinstance(backbone, ResNet):
        return 0
    folded = 0
    stem = backbone.conv1
    stem_last = stem[-1] if isinstance(stem, nn.Sequential) else stem
    folded += _fold_pair(stem_last, backbone.bn1)
    for module in backbone.modules():
        if isinstance(module, nn.Sequential):
            children = list(module)
            folded += sum(_fold_pair(a, b) for a, b in zip(children, children[1:]))
        else:
            for name, child in module.named_children():
                if name.startswith("bn") and hasattr(module, "conv" + name[2:]):
                    folded += _fold_pair(getattr(module, "conv" + name[2:]), child)
    return folded
