"""Post-norm transformer of Query2Label/SADCL on ``scaled_dot_product_attention``.

The encoder models the context of the image's feature grid; the decoder lets one *label query* per class
look at that grid through cross-attention only (no self-attention between queries, as in the authors'
``rm_self_attn_dec``). Parameter names and layouts (packed ``in_proj_weight`` with q/k/v rows,
``out_proj``, ``linear1/2``, ``norm1..3``) follow ``torch.nn.MultiheadAttention``/the authors' modules,
so their checkpoints map one to one.

Tensors are batch-first: ``[B, L, D]``.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head attention with a packed q/k/v input projection, computed with SDPA."""

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"hidden_dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:  # [B, L, D] -> [B, h, L, D/h]
        b, n, d = t.shape
        return t.view(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return the attended values ``[B, Lq, D]`` and, if asked, the head-averaged weights ``[B, Lq, Lk]``."""
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        q = self._heads(F.linear(query, w_q, b_q))
        k = self._heads(F.linear(key, w_k, b_k))
        v = self._heads(F.linear(value, w_v, b_v))
        dropout = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            # Explicit softmax only when the attention map itself is wanted (attention maps, not training).
            attn = torch.softmax((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1), dim=-1)
            weights = attn.mean(dim=1)
            out = F.dropout(attn, dropout, self.training) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        out = out.transpose(1, 2).flatten(2)
        return self.out_proj(out), weights


class EncoderLayer(nn.Module):
    """``src ← LN1(src + MHA(src + pos, src + pos, src))``; ``src ← LN2(src + FFN(src))``."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = Attention(dim, num_heads, dropout)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, src: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        q = k = src + pos
        src = self.norm1(src + self.dropout(self.self_attn(q, k, src)[0]))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout(ffn))


class DecoderLayer(nn.Module):
    """Cross-attention-only decoder layer: label queries attend to the encoded feature grid.

    ``tgt ← LN2(tgt + MHA(tgt + query_pos, memory + pos, memory))``; ``tgt ← LN3(tgt + FFN(tgt))``.
    The authors delete ``self_attn``/``norm1``, hence the numbering.
    """

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.multihead_attn = Attention(dim, num_heads, dropout)
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        pos: torch.Tensor,
        query_pos: torch.Tensor,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attended, weights = self.multihead_attn(tgt + query_pos, memory + pos, memory, need_weights)
        tgt = self.norm2(tgt + self.dropout(attended))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout(ffn)), weights


class Encoder(nn.Module):
    def __init__(self, layer: EncoderLayer, num_layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))

    def forward(self, src: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            src = layer(src, pos)
        return src  # post-norm: no final encoder norm


class Decoder(nn.Module):
    def __init__(self, layer: DecoderLayer, num_layers: int, dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        pos: torch.Tensor,
        query_pos: torch.Tensor,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        weights = None
        for layer in self.layers:
            tgt, weights = layer(tgt, memory, pos, query_pos, need_weights)
        return self.norm(tgt), weights  # weights of the last layer


class Transformer(nn.Module):
    """Encoder over the feature grid, then label queries decoded against it."""

    def __init__(
        self, dim: int, num_heads: int, ffn_dim: int, num_encoder_layers: int, num_decoder_layers: int, dropout: float
    ) -> None:
        super().__init__()
        self.encoder = Encoder(EncoderLayer(dim, num_heads, ffn_dim, dropout), num_encoder_layers)
        self.decoder = Decoder(DecoderLayer(dim, num_heads, ffn_dim, dropout), num_decoder_layers, dim)
        # As the authors (DETR): xavier-uniform for every matrix of the transformer.
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(
        self, src: torch.Tensor, pos: torch.Tensor, query_pos: torch.Tensor, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``src``/``pos``: ``[B, HW, D]``; ``query_pos``: ``[C, D]``. Returns ``h`` ``[B, C, D]``."""
        memory = self.encoder(src, pos)
        query_pos = query_pos.unsqueeze(0).expand(src.shape[0], -1, -1)
        tgt = torch.zeros_like(query_pos)  # content of the label queries starts empty
        return self.decoder(tgt, memory, pos, query_pos, need_weights)
