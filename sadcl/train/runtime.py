"""Where and how a run computes: the device (one per process under ``torchrun``), autocast, seeding."""

from __future__ import annotations

import contextlib
import random
import warnings

import numpy as np
import torch

from .distributed import DistInfo

__all__ = ["amp_dtype", "autocast", "device_type", "resolve_device", "seed_everything"]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``, or nothing when ``dtype`` is None."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def device_type(device: str | torch.device | None) -> str:
    """The device type a run will use (``cuda`` when available and none is given)."""
    if device is not None:
        return torch.device(device).type
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(device: str | torch.device | None, info: DistInfo) -> torch.device:
    """The device of this process: a bare ``cuda`` becomes the process's own GPU (its local rank)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", info.local_rank if info.world_size > 1 else torch.cuda.current_device())
    return dev


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: bf16/fp16 on CUDA, none elsewhere (CPU autocast would only slow the recipe down)."""
    if device.type != "cuda" or amp == "none":
        return None
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        warnings.warn(
            "this GPU has no bfloat16 support: using float16 autocast with a GradScaler instead", stacklevel=3
        )
        return torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
