"""Training checkpoints: atomic writes, safe loading, and the random-number state an exact resume needs.

A *training* checkpoint (``last.pt``) holds everything needed to continue bit for bit: model, EMA,
optimiser, scheduler, grad scaler, memory bank(s), the RNG states of every process, the epoch and the
best metrics. It is written with ``torch.save`` to a temporary sibling, flushed, and renamed over the
final name, so a crash never leaves a half-written file there; it is read back with
``torch.load(weights_only=True)``, which never runs pickled code. *Publishable* weights are safetensors
(``best.safetensors``, :func:`export_weights`) and never include the memory bank.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._atomic import atomic_write
from ..zoo.loading import checkpoint_metadata, export_state_dict
from ..zoo.safetensors_io import save_safetensors

__all__ = [
    "CHECKPOINT_FORMAT",
    "atomic_torch_save",
    "export_weights",
    "load_training_checkpoint",
    "rng_state",
    "set_rng_state",
]

CHECKPOINT_FORMAT = "sadcl-train-v1"


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to a temporary file next to ``path``, fsync, then ``os.replace`` onto ``path``."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def load_training_checkpoint(path: str | os.PathLike, *, mmap: bool = False) -> dict[str, Any]:
    """Read a ``last.pt`` written by the trainer (a run folder also works), onto the CPU, without unpickling code.

    ``mmap=True`` maps the tensors lazily instead of reading them (cheap when only the config is needed).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise FileNotFoundError(f"training checkpoint {path} not found (pass the run's last.pt or its folder)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # truncated, foreign or tampered file
        raise RuntimeError(
            f"{path} is not a readable training checkpoint ({type(e).__name__}: {e}). Resume from a last.pt "
            "written by `sadcl train`; published .safetensors weights start a new run with --checkpoint instead."
        ) from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise RuntimeError(
            f"{path} is not a sadcl training checkpoint (expected format {CHECKPOINT_FORMAT!r}); to start "
            "from model weights use --checkpoint with a .safetensors file"
        )
    return ckpt


# ----------------------------------------------------------------------------- RNG state
def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and (current device) CUDA generator states, in ``weights_only``-loadable types."""
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np.asarray(np_state["state"]["key"], dtype=np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None,
    }
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": n["bit_generator"],
            "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ----------------------------------------------------------------------------- publishable weights
def export_weights(model: nn.Module, path: str | os.PathLike, *, training: Mapping[str, Any] | None = None) -> str:
    """Write ``model``'s weights as safetensors (atomic, deterministic) with the self-describing header (config,
    labels, preprocessing, what it descends from) and how training selected them (epoch, metric, raw/EMA);
    returns the sha256. No memory bank, no optimiser state."""
    return save_safetensors(export_state_dict(model), path, checkpoint_metadata(model, training=training))
