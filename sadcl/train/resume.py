"""Resuming a run: which settings a resumed run must keep, whether anything is left to train, where the run is."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .config import InexactResumeWarning, RunFinishedError, TrainConfig, cli_flag, normalise
from .early_stopping import EarlyStopping

__all__ = ["check_resumable", "finished_reason", "resume_folder"]


def resume_folder(cfg: TrainConfig) -> Path | None:
    """The folder of the run ``cfg`` resumes (None for a new run)."""
    if not cfg.resume:
        return None
    resume = Path(cfg.resume)
    return resume if resume.is_dir() else resume.parent


def finished_reason(ckpt: Mapping[str, Any], cfg: TrainConfig) -> str | None:
    """Why the run of ``ckpt`` has nothing left to train under ``cfg`` (None when it has): every epoch is
    done, or the early-stopping rule (with ``cfg.patience``, which a resume may raise) already fired."""
    done = int(ckpt["epoch"])
    if done >= cfg.epochs:
        return f"all {cfg.epochs} epochs are done"
    history = list(ckpt.get("history") or [])
    if history and "val" in history[-1]:
        tracker = EarlyStopping(cfg.patience)
        tracker.load_state_dict(ckpt["tracker"])
        if tracker.should_stop(done - 1, history[-1]["val"]["ema"]["mAP"]):
            return (
                f"it stopped early after epoch {done - 1} with patience {cfg.patience}; a larger patience continues it"
            )
    return None


def check_resumable(ckpt: Mapping[str, Any], config: TrainConfig) -> None:
    """Refuse changed trajectory settings and a run with nothing left to train; warn about changed
    settings that keep the run valid but not bit-exact."""
    stored = ckpt["config"]
    now = config.to_dict()
    diffs = [
        f"{k}: checkpoint {stored.get(k)!r}, now {now[k]!r}"
        for k in TrainConfig.TRAJECTORY_KEYS
        if normalise(stored.get(k)) != normalise(now[k])
    ]
    if diffs:
        raise ValueError(
            f"cannot resume {config.resume} exactly: these settings differ from the checkpoint's: "
            + "; ".join(diffs)
            + ". Use TrainConfig.from_checkpoint (the CLI does) to keep them."
        )
    finished = finished_reason(ckpt, config)
    if finished is not None:
        run = resume_folder(config)
        raise RunFinishedError(
            f"run {run} is already finished ({finished}); nothing was changed. To train further, start a new "
            f"run from its weights (checkpoint='{run / 'best.safetensors'}')",
            f"run {run} is already finished ({finished.replace('patience', '--patience')}); nothing was "
            f"changed. To train further, start a new run with --checkpoint {run / 'best.safetensors'}",
        )
    for key in TrainConfig.EXACTNESS_KEYS:
        if key in stored and normalise(stored[key]) != normalise(now[key]):
            why = "the run will not continue bit-exactly (random augmentations and dropout draw differently)"
            was, new = (("on" if v else "off") if isinstance(v, bool) else v for v in (stored[key], now[key]))
            warnings.warn(
                InexactResumeWarning(
                    f"resuming with {key}={now[key]!r} (the run used {stored[key]!r}): {why}",
                    f"resuming with {cli_flag(key)} {new} (the run used {was}): {why}; "
                    f"omit {cli_flag(key)} to keep the run's value",
                ),
                stacklevel=3,
            )
