"""Exponential moving average (EMA) of a model's weights, as in the recipe (decay 0.9998, every step)."""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import Tensor, nn

__all__ = ["ModelEma"]


class ModelEma:
    """A frozen copy of ``model`` whose floating-point parameters *and* buffers track
    ``ema ← decay · ema + (1 − decay) · model`` after every optimiser step; integer buffers are copied.

    ``module`` is the averaged network (eval mode, no gradients), evaluated next to the raw model each
    epoch. It is separate from any DDP wrapper, so its ``state_dict`` keys are those of the bare model.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9998) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must lie in [0, 1], got {decay}")
        self.decay = float(decay)
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def _pairs(self, model: nn.Module) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        ema_sd, cur_sd = self.module.state_dict(), model.state_dict()
        if ema_sd.keys() != cur_sd.keys():
            raise RuntimeError("ModelEma.update: the model's state_dict keys changed since the EMA was created")
        floats_e, floats_m, others_e, others_m = [], [], [], []
        for k, e in ema_sd.items():
            (floats_e if e.is_floating_point() else others_e).append(e)
            (floats_m if e.is_floating_point() else others_m).append(cur_sd[k])
        return floats_e, floats_m, others_e, others_m

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step towards ``model`` (the bare model, not a DDP wrapper)."""
        floats_e, floats_m, others_e, others_m = self._pairs(model)
        if floats_e:
            # state_dict() tensors share storage with the module: updating them in place updates the EMA.
            torch._foreach_lerp_(floats_e, floats_m, 1.0 - self.decay)
        for e, m in zip(others_e, others_m):
            e.copy_(m)

    def state_dict(self) -> dict[str, Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state_dict: Mapping[str, Tensor]) -> None:
        self.module.load_state_dict(state_dict, strict=True)
