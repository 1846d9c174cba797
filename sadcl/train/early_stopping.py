"""Best-model bookkeeping and the authors' early-stopping rule."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["EarlyStopping"]


@dataclass
class EarlyStopping:
    """Best-model bookkeeping and the authors' early-stopping rule (REFERENCE d.1).

    After epoch ``e`` with raw mAP ``r`` and EMA mAP ``m``: the best is ``max(r, m)`` over epochs (EMA wins
    ties). Stop when ``e − max(best_epoch, best_raw_epoch) > patience`` and ``m`` is below the best EMA mAP.
    ``patience=None`` never stops.
    """

    patience: int | None = 8
    best: float = -math.inf
    best_epoch: int = -1
    best_source: str = ""
    best_raw: float = -math.inf
    best_raw_epoch: int = -1
    best_ema: float = -math.inf
    best_ema_epoch: int = -1

    def update(self, epoch: int, raw: float, ema: float) -> str | None:
        """Record an epoch; returns ``"ema"`` or ``"raw"`` when it set a new overall best, else None."""
        if raw > self.best_raw:
            self.best_raw, self.best_raw_epoch = raw, epoch
        if ema > self.best_ema:
            self.best_ema, self.best_ema_epoch = ema, epoch
        source, value = ("ema", ema) if ema >= raw else ("raw", raw)
        if value > self.best:
            self.best, self.best_epoch, self.best_source = value, epoch, source
            return source
        return None

    def should_stop(self, epoch: int, ema: float) -> bool:
        if self.patience is None or self.best_epoch < 0:
            return False
        return epoch - max(self.best_epoch, self.best_raw_epoch) > self.patience and ema < self.best_ema

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for key, value in state.items():
            if key != "patience":  # patience is a run setting: the resumed run's value applies
                setattr(self, key, value)
