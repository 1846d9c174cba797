"""Sine position encoding ("v2" in the authors' code), computed for any feature-map size.

The authors precompute one buffer for ``img_size / 32`` and ignore the input's size; we compute the
same values for the feature map actually seen, so one set of weights runs at 448 and at 576.
"""

from __future__ import annotations

import math

import torch


def sine_position_encoding(
    height: int,
    width: int,
    dim: int,
    *,
    temperature: float = 10000.0,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Return the normalised 2-D sine encoding of shape ``[dim, height, width]``.

    With ``F = dim / 2`` and rows/columns indexed from 1: ``ŷ_i = i / (H + 1e-6) · 2π`` (likewise ``x̂_j``),
    ``ω_k = T^(2⌊k/2⌋ / F)``, channel ``k < F`` holds ``sin(ŷ/ω_k)`` (even ``k``) or ``cos(ŷ/ω_k)`` (odd ``k``),
    and channels ``F + k`` the same for ``x̂``. There is no 0.5 offset (unlike DETR's default).
    """
    if dim % 4 != 0:
        raise ValueError(f"hidden_dim must be divisible by 4 for the sine position encoding, got {dim}")
    half = dim // 2
    # Computed in float64 so the float32 result is exact to the last bit whatever the device.
    y = torch.arange(1, height + 1, dtype=torch.float64, device=device) / (height + 1e-6) * (2 * math.pi)
    x = torch.arange(1, width + 1, dtype=torch.float64, device=device) / (width + 1e-6) * (2 * math.pi)
    k = torch.arange(half, dtype=torch.float64, device=device)
    omega = temperature ** (2 * torch.div(k, 2, rounding_mode="floor") / half)

    def encode(t: torch.Tensor) -> torch.Tensor:  # [L] -> [half, L]
        phase = t[None, :] / omega[:, None]
        even = (torch.arange(half, device=device) % 2 == 0)[:, None]
        return torch.where(even, phase.sin(), phase.cos())

    pos_y = encode(y)[:, :, None].expand(half, height, width)
    pos_x = encode(x)[:, None, :].expand(half, height, width)
    return torch.cat([pos_y, pos_x], dim=0).to(dtype)
