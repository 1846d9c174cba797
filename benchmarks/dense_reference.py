"""Baselines shaped like the authors' code, written here from REFERENCE.md (c.2, c.3, a.9, g.12) for the benchmarks.

* :func:`dense_sample_contrastive`: MultiSupCon as the authors compute it, on every one of the ``N·C``
  label embeddings (``N = V·B``): the full ``(V·B·C)²`` Gram matrix, the label outer product, identity and
  ``ones − identity`` masks, masked products, ``exp`` of the whole matrix. ``official=True`` has their two
  quirks (mis-laid-out anchor weights, mismatched stability shifts, ε in the log); ``official=False`` is the
  same dense procedure with the defects fixed, the counterpart of ``SampleContrastiveLoss(official=False)``.
* :func:`dense_prototype_contrastive`: Semantic2PrototypeConLoss with ``F.cosine_similarity`` on the
  broadcast prototypes and masked sums of ``exp`` (REFERENCE c.3).
* :func:`loop_memory_update`: the per-label Python loop over ``target.nonzero()`` (REFERENCE a.9, g.12).

Everything runs in the inputs' dtype (the authors' pipeline has float64 labels, which makes theirs 1.3–1.6×
slower and 1.7× larger again: REFERENCE c.5; these baselines are the kinder float32 version).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def dense_sample_contrastive(
    features: Tensor, targets: Tensor, temperature: float = 0.2, official: bool = True, eps: float = 1e-5
) -> Tensor:
    """SSCL over all ``(V·B·C)²`` pairs of label embeddings (``features [B, V, C, D]``, ``targets [B, C]``)."""
    B, V, C, D = features.shape
    N, NC = V * B, V * B * C
    dtype = features.dtype
    y = (targets > 0.5).to(dtype)
    z = F.normalize(features, dim=-1)
    z_rows = z.transpose(0, 1).reshape(NC, D)  # view-major rows a = v·B + i, then classes
    y_rows = y.repeat(V, 1)  # ỹ[a] = y[a mod B]
    y_flat = y_rows.reshape(NC)
    sim = z_rows @ z_rows.t() / temperature  # the (V·B·C)² Gram matrix
    label_mask = y_flat[:, None] * y_flat[None, :]  # both ends are positive label embeddings
    identity = torch.eye(NC, dtype=dtype, device=features.device)
    not_self = torch.ones(NC, NC, dtype=dtype, device=features.device) - identity
    cls = torch.arange(C, device=features.device).repeat(N)
    same_class = (cls[:, None] == cls[None, :]).to(dtype)
    contrast_mask = label_mask * not_self  # A(a, c)
    positive_mask = contrast_mask * same_class  # P(a, c)
    n_pos = positive_mask.sum(1)
    if official:
        s = sim.detach()
        m_a = (s * contrast_mask).max(1, keepdim=True).values  # masked entries at 0
        per_class = s.reshape(N, C, N, C).diagonal(dim1=1, dim2=3)  # [N, N, C]: s(a,c; b,c)
        m_p = (y_rows[:, None, :] * y_rows[None, :, :] * per_class).max(-1).values  # [N, N]
        m_p = m_p.repeat_interleave(C, 0).repeat_interleave(C, 1)  # tiled to (N·C)²
        weight = y.repeat_interleave(V, 0).reshape(NC)  # quirk 1: y[a // V, c]
        denom = (torch.exp(sim - m_a) * contrast_mask).sum(1)
        denom = torch.where(denom == 0, torch.ones_like(denom), denom)
        log_denom = weight * torch.log(denom + eps)
        per_anchor = -((sim - m_p - log_denom[:, None]) * positive_mask).sum(1) / n_pos.clamp(min=1)
    else:
        weight = y_flat
        shifted = sim - (sim * contrast_mask).max(1, keepdim=True).values.detach()  # one shift: it cancels
        denom = (torch.exp(shifted) * contrast_mask).sum(1)
        denom = torch.where(denom == 0, torch.ones_like(denom), denom)
        log_prob = shifted - torch.log(denom)[:, None]
        per_anchor = -(log_prob * positive_mask).sum(1) / n_pos.clamp(min=1)
    total = weight.sum()
    return (weight * per_anchor).sum() / total.clamp(min=1) if float(y.sum()) > 0 else features.sum() * 0.0


def dense_prototype_contrastive(
    embeddings: Tensor, prototypes: Tensor, targets: Tensor, temperature: float = 0.07
) -> Tensor:
    """PSCL as the authors: cosine similarity to broadcast prototypes, per-class shift, masked sums of exp."""
    if prototypes.dim() == 2:
        prototypes = prototypes[None]
    y = (targets > 0.5).to(embeddings.dtype)
    s = F.cosine_similarity(embeddings, prototypes, dim=-1, eps=1e-8) / temperature  # [B, C]
    s = s - s.max(0, keepdim=True).values.detach()
    e = torch.exp(s)
    present = y.sum(0) > 0
    pos = torch.where(present, torch.log((e * y).sum(0) + (~present).to(e.dtype)), torch.zeros_like(s[0]))
    total = torch.log(e.sum(0))
    return -(pos - total).sum() / y.sum()


def loop_memory_update(
    bank: Tensor, embeddings: Tensor, targets: Tensor, logits: Tensor, threshold: float = 0.8
) -> None:
    """The authors' memory-bank update: one positive label at a time, Python ``int``s and a tensor ``if``."""
    prob = torch.sigmoid(logits)
    for index in targets.nonzero():
        b, c = int(index[0]), int(index[1])
        if prob[b, c] > threshold:
            bank[b, c] = embeddings[b, c].detach()
