"""SADCL: Semantic-Aware Dual Contrastive Learning for multi-label image classification (Ma et al., ECAI 2023).

Image → backbone (last stage) → sine position encoding → transformer encoder → one label query per class
decoded against the feature grid (semantic-aware representation learning, SARL) → a group-wise linear head
gives the logits. For the dual contrastive objectives, a projection head maps label-level embeddings and
the learnable class prototypes into the contrastive space (sample-to-sample SSCL, prototype-to-sample PSCL).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import timm
import torch
from timm.layers import freeze_batch_norm_2d
from torch import nn

from .frozen_bn import fold_frozen_batch_norm
from .position import sine_position_encoding
from .transformer import Transformer

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Parameters whose first dimension is the label set: the only ones a head change re-initialises.
LABEL_SPECIFIC_KEYS = ("query_embed.weight", "fc.W", "fc.b", "prototypes")
# The keywords of SADCL(...): what a model's config, a file's header and create_model's overrides may name.
CONSTRUCTOR_KEYS = (
    "backbone",
    "num_classes",
    "label_names",
    "img_size",
    "hidden_dim",
    "ffn_dim",
    "num_heads",
    "num_encoder_layers",
    "num_decoder_layers",
    "dropout",
    "proj_dim",
    "pretrained_backbone",
    "freeze_bn",
    "freeze_stem",
    "fold_frozen_bn",
)


class GroupWiseLinear(nn.Module):
    """One independent linear probe per class: ``logit_c = W_c · h_c + b_c``."""

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.W = nn.Parameter(torch.empty(1, num_classes, dim))
        self.b = nn.Parameter(torch.empty(1, num_classes))
        bound = 1.0 / math.sqrt(dim)
        nn.init.uniform_(self.W, -bound, bound)
        nn.init.uniform_(self.b, -bound, bound)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return (self.W * h).sum(-1) + self.b


class ProjectionHead(nn.Module):
    """``hidden_dim → hidden_dim → proj_dim`` MLP with ReLU; the losses normalise its output."""

    def __init__(self, dim: int, proj_dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(dim, dim), nn.Linear(dim, proj_dim)])

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.layers[1](torch.relu(self.layers[0](t)))


def _freeze_stem_and_first_stage(backbone: nn.Module) -> None:
    """Freeze every parameter up to and including the first stride-4 stage (ResNet: conv1, bn1, layer1).

    This is the recipe's "train layer2–4 only", written for any timm backbone through its ``feature_info``.
    """
    info = getattr(backbone, "feature_info", None) or []
    first_stage = next((f["module"] for f in info if f.get("reduction", 0) >= 4), None)
    if first_stage is None:
        return
    inside = False
    for name, p in backbone.named_parameters():
        if name.startswith(first_stage + "."):
            inside = True
        elif inside:
            break
        p.requires_grad_(False)


class SADCL(nn.Module):
    """The SADCL network (Query2Label-style label-query transformer with projection head and prototypes).

    Args:
        backbone: any timm model name with a convolutional feature map (``resnet101`` as in the paper).
        num_classes: number of labels ``C``; taken from ``label_names`` when only those are given.
        label_names: one name per label (defaults to ``"0" … "C-1"``).
        img_size: training/evaluation resolution (metadata; the network itself accepts any size).
        hidden_dim: transformer width ``d``; a 1×1 input projection is added only when it differs from
            the backbone's channels.
        ffn_dim, num_heads, num_encoder_layers, num_decoder_layers, dropout: transformer shape.
        proj_dim: output width of the projection head (contrastive space).
        pretrained_backbone: load the backbone's ImageNet weights through timm (downloads).
        freeze_bn: freeze every BatchNorm (the recipe, for an ImageNet-initialised backbone).
        freeze_stem: freeze the stem and first stage (the recipe); set both to False to train a
            backbone from scratch.
        fold_frozen_bn: with ``freeze_bn``, apply each frozen BatchNorm of a ResNet backbone inside the
            convolution before it (the same function, fewer passes over the activations; ``frozen_bn.py``).
            The ``state_dict`` is the same either way.
    """

    def __init__(
        self,
        backbone: str = "resnet101",
        num_classes: int | None = None,
        label_names: Sequence[str] | None = None,
        img_size: int = 448,
        hidden_dim: int = 2048,
        ffn_dim: int = 8192,
        num_heads: int = 4,
        num_encoder_layers: int = 1,
        num_decoder_layers: int = 2,
        dropout: float = 0.1,
        proj_dim: int = 1024,
        pretrained_backbone: bool = False,
        freeze_bn: bool = True,
        freeze_stem: bool = True,
        fold_frozen_bn: bool = True,
    ) -> None:
        super().__init__()
        label_names = resolve_labels(num_classes, label_names)
        self.config: dict[str, Any] = dict(
            backbone=backbone,
            num_classes=len(label_names),
            label_names=list(label_names),
            img_size=img_size,
            hidden_dim=hidden_dim,
            ffn_dim=ffn_dim,
            num_heads=num_heads,
            num_encoder_layers=num_encoder_layers,
            num_decoder_layers=num_decoder_layers,
            dropout=dropout,
            proj_dim=proj_dim,
            freeze_bn=freeze_bn,
            freeze_stem=freeze_stem,
        )
        self.hidden_dim = hidden_dim

        try:  # (sadcl.create_model runs this within sadcl's download deadline when timm downloads weights)
            self.backbone = timm.create_model(backbone, pretrained=pretrained_backbone, num_classes=0, global_pool="")
        except RuntimeError as e:  # timm's "Unknown model" is a RuntimeError
            raise ValueError(f"backbone {backbone!r} is not a timm model: {e}") from e
        if freeze_bn:  # BatchNorm frozen everywhere, as the authors
            self.backbone = freeze_batch_norm_2d(self.backbone)
            if fold_frozen_bn:
                fold_frozen_batch_norm(self.backbone)
        if freeze_stem:
            _freeze_stem_and_first_stage(self.backbone)
        channels = self.backbone.num_features
        self.input_proj = nn.Conv2d(channels, hidden_dim, 1) if channels != hidden_dim else nn.Identity()

        self.transformer = Transformer(hidden_dim, num_heads, ffn_dim, num_encoder_layers, num_decoder_layers, dropout)
        self.proj_head = ProjectionHead(hidden_dim, proj_dim)
        self._init_label_parameters(len(label_names))
        self.pretrained_cfg: dict[str, Any] = dict(
            input_size=(3, img_size, img_size),
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            interpolation="bilinear",
            label_names=list(label_names),
            num_classes=len(label_names),
        )

    # -- label-specific parameters ----------------------------------------------------------------------
    def _init_label_parameters(self, num_classes: int) -> None:
        d = self.hidden_dim
        device = next(self.transformer.parameters()).device
        self.query_embed = nn.Embedding(num_classes, d, device=device)  # N(0, 1), positional queries
        self.fc = GroupWiseLinear(num_classes, d).to(device)
        # Class prototypes live where the decoder's LayerNorm'd embeddings live (norm ≈ √d); they are
        # recomputed from data before SADCL fine-tuning (sadcl.train.memory.compute_prototypes).
        self.prototypes = nn.Parameter(torch.randn(num_classes, d, device=device))

    def reset_classifier(self, num_classes: int, label_names: Sequence[str] | None = None) -> None:
        """Re-initialise only the label-specific parameters (queries, head, prototypes) for a new label set
        (timm's ``reset_classifier``; ``label_names`` name the new labels, by index when omitted)."""
        label_names = resolve_labels(num_classes, label_names)
        self._init_label_parameters(len(label_names))
        self.config.update(num_classes=len(label_names), label_names=list(label_names))
        self.pretrained_cfg = dict(self.pretrained_cfg, label_names=list(label_names), num_classes=len(label_names))

    @property
    def label_names(self) -> list[str]:
        return self.config["label_names"]

    @property
    def num_classes(self) -> int:
        return self.config["num_classes"]

    # -- forward ----------------------------------------------------------------------------------------
    def _encode_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        f = self.backbone.forward_features(x)
        if f.dim() != 4:
            raise ValueError(
                f"backbone {self.config['backbone']!r} returned features of shape {tuple(f.shape)}; "
                "SADCL needs a convolutional feature map [B, C, H, W]"
            )
        f = self.input_proj(f)
        pos = sine_position_encoding(f.shape[-2], f.shape[-1], self.hidden_dim, device=f.device, dtype=f.dtype)
        grid = (f.shape[-2], f.shape[-1])
        return f.flatten(2).transpose(1, 2), pos.flatten(1).transpose(0, 1).unsqueeze(0), grid

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Label-level embeddings ``h`` ``[B, C, hidden_dim]`` (decoder output after its final LayerNorm)."""
        src, pos, _ = self._encode_inputs(x)
        return self.transformer(src, pos, self.query_embed.weight)[0]

    def forward_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``h`` and the last decoder layer's cross-attention ``[B, C, H, W]`` over the feature grid
        (averaged over heads; each map sums to 1): the paper's category-related attention maps."""
        src, pos, grid = self._encode_inputs(x)
        h, weights = self.transformer(src, pos, self.query_embed.weight, need_weights=True)
        return h, weights.unflatten(-1, grid)

    def forward_head(self, h: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits ``[B, C]`` from label-level embeddings (with ``pre_logits``, the embeddings themselves:
        SADCL's classifier acts on each label's own embedding, so there is no pooled feature before it)."""
        return h if pre_logits else self.fc(h)

    def get_classifier(self) -> nn.Module:
        """The group-wise linear classifier (timm's uniform interface)."""
        return self.fc

    @property
    def default_cfg(self) -> dict[str, Any]:
        """timm's older name for :attr:`pretrained_cfg`."""
        return self.pretrained_cfg

    def project(self, t: torch.Tensor) -> torch.Tensor:
        """Map embeddings (label-level, memory bank or prototypes) ``[..., hidden_dim]`` to ``[..., proj_dim]``."""
        return self.proj_head(t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Plain logits: the projection head and prototypes are training-only work.
        return self.forward_head(self.forward_features(x))


def resolve_labels(num_classes: int | None, label_names: Sequence[str] | None) -> list[str]:
    """The label names a model with these arguments has (names by index when only a count is given)."""
    if label_names is None:
        if num_classes is None or num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer (or give label_names), got {num_classes!r}")
        return [str(i) for i in range(num_classes)]
    if isinstance(label_names, str):  # would silently become one label per character
        raise TypeError(f"label_names must be a list of names, not one string ({label_names[:40]!r})")
    label_names = [str(n) for n in label_names]
    if num_classes is not None and num_classes != len(label_names):
        raise ValueError(f"num_classes={num_classes} but {len(label_names)} label_names were given")
    if len(set(label_names)) != len(label_names):  # Counter only on failure: one linear pass either way
        dup = [n for n, count in Counter(label_names).items() if count > 1]
        listed = ", ".join(repr(n) for n in dup[:5]) + (f" and {len(dup) - 5} more" if len(dup) > 5 else "")
        raise ValueError(f"label_names must be unique; duplicated: {listed}")
    if not label_names:
        raise ValueError("label_names is empty")
    return label_names
