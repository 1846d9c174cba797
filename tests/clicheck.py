"""Helpers shared by the command-line tests: the one-line error contract and saving a model as sadcl does."""

from __future__ import annotations

from pathlib import Path

from sadcl.model import SADCL
from sadcl.zoo.loading import checkpoint_metadata, export_state_dict
from sadcl.zoo.safetensors_io import save_safetensors


def one_error_line(err: str, command: str, *needles: str) -> str:
    """Assert ``err`` is exactly one ``sadcl CMD: error: …`` line holding ``needles``; return it."""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"sadcl {command}: error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], err
    return lines[0]


def save_model(model: SADCL, path: Path) -> Path:
    """``model`` as a self-describing ``.safetensors`` file (weights and the sadcl header)."""
    save_safetensors(export_state_dict(model), path, checkpoint_metadata(model))
    return path
