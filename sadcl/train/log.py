"""The run log (``log.jsonl``): one strict-JSON line per record, appended whole or not at all."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from .._atomic import append_line

__all__ = ["append_record"]


def append_record(path: Path, record: Mapping[str, Any]) -> None:
    """Append ``record``, stamped with the time, to the log at ``path``."""
    record = _finite_json({"time": round(time.time(), 3), **record})
    # One write of the whole line, undone if it fails (full disk): the log never holds a torn record.
    append_line(path, json.dumps(record, default=_json_default, allow_nan=False) + "\n")


def _finite_json(value: Any) -> Any:
    """NaN/inf → None, recursively: log.jsonl stays strict JSON (the event itself says what went wrong)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_json(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Tensor):
        return value.tolist()
    return str(value)
