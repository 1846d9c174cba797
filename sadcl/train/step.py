"""One training step's maths: the SADCL forward as one module (what DDP wraps) and the loss terms, ASL on this
process's batch and the contrastive terms on the global batch."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..model import SADCL
from .distributed import all_gather, all_gather_with_grad
from .losses import SADCLCriterion

__all__ = ["TERMS", "TrainForward", "step_losses"]

TERMS = ("loss", "asl", "sample", "prototype")  # logged loss terms: weighted total, then the unweighted terms


class TrainForward(nn.Module):
    """One training forward of SADCL as a module, so DDP sees (and synchronises) every parameter it uses."""

    def __init__(self, model: SADCL, project: bool, prototypes: bool) -> None:
        super().__init__()
        self.model, self.project, self.prototypes = model, project, prototypes

    def forward(self, x: Tensor, bank: Tensor | None = None) -> tuple[Tensor, ...]:
        h = self.model.forward_features(x)
        logits = self.model.forward_head(h)
        if not self.project:
            return h, logits
        z = self.model.project(h)
        bank_z = self.model.project(bank) if bank is not None else None
        protos_z = self.model.project(self.model.prototypes) if self.prototypes else None
        return h, logits, z, bank_z, protos_z


def step_losses(
    crit: SADCLCriterion, logits: Tensor, y: Tensor, z: Tensor | None, bank_z: Tensor | None, protos_z: Tensor | None
) -> dict[str, Tensor]:
    """ASL on this process's batch; SSCL/PSCL on the global batch (embeddings gathered from all processes)."""
    w_asl, w_sample, w_proto = crit.weights
    terms: dict[str, Tensor] = {"asl": crit.asl(logits, y)}
    if z is not None:
        y_all = all_gather(y)
        if bank_z is not None:
            views = all_gather_with_grad(torch.stack([z, bank_z], 1))  # [B_global, 2, C, P]
            terms["sample"] = crit.sample(views, y_all)
            z_all = views[:, 0]
        else:
            z_all = all_gather_with_grad(z)
        if protos_z is not None:
            terms["prototype"] = crit.prototype(z_all, protos_z, y_all)
    weight = {"asl": w_asl, "sample": w_sample, "prototype": w_proto}
    terms["loss"] = sum(weight[k] * v for k, v in terms.items())
    return terms
