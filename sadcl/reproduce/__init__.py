"""Reproducing the paper's checkpoints: ``sadcl reproduce DATASET`` (the authors' two steps per dataset as data in
:mod:`.recipes`, the resolved plan and its GPU estimate in :mod:`.plan`, the run in :mod:`.run`, what a finished run
hands over in :mod:`.results`). ``from sadcl.reproduce import reproduce, resolve_plan`` loads them on first use."""

from __future__ import annotations

from .._lazy import lazy_attributes

_LAZY = {"DATASETS": ".recipes", "Plan": ".plan", "estimate": ".plan", "resolve_plan": ".plan", "reproduce": ".run"}

__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())
