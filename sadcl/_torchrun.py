"""The process layout ``torchrun`` describes in the environment, read the same way by training and tagging."""

from __future__ import annotations

import os


def env_int(name: str, default: int) -> int:
    """``$name`` as a whole number (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ...); ``default`` when unset or empty."""
    value = os.environ.get(name, "")
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not a whole number (torchrun sets it)") from None
