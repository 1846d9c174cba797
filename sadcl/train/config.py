"""The settings of a fine-tuning run: :class:`TrainConfig` (the authors' recipe as defaults), the rules every
numeric setting follows, the errors a bad setting raises, and the name of each setting as a ``sadcl`` flag."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._text import printable
from .checkpoint import load_training_checkpoint
from .data import DataSpec

__all__ = [
    "DEFAULT_TRAIN_MODEL",
    "DEFAULT_WORKERS",
    "NUMBER_RULES",
    "ConfigError",
    "InexactResumeWarning",
    "RunFinishedError",
    "TrainConfig",
    "check_numbers",
    "cli_flag",
    "normalise",
]

DEFAULT_TRAIN_MODEL = "sadcl_coco_448"  # the paper's model, when neither --model nor --checkpoint is given
# Data-loading processes: 4, or fewer on a machine with fewer cores (more would only compete with training).
DEFAULT_WORKERS = min(4, os.cpu_count() or 1)


class ConfigError(ValueError):
    """A bad or conflicting run setting. ``str()`` names settings as Python keywords (``loss_weights``);
    :attr:`cli` says the same with the ``sadcl`` flags (``--loss-weights``)."""

    def __init__(self, message: str, cli: str | None = None) -> None:
        super().__init__(message)
        self.cli = message if cli is None else cli

    @classmethod
    def about(cls, key: str, problem: str) -> ConfigError:
        """``"<setting> <problem>"``, the setting named as a keyword and as a flag."""
        return cls(f"{key} {problem}", f"{cli_flag(key)} {problem}")


class RunFinishedError(ConfigError):
    """``resume`` names a run with nothing left to train (every epoch done, or stopped early)."""


class InexactResumeWarning(UserWarning):
    """A resumed run continues, but not bit-exactly (another number of workers or processes …)."""

    def __init__(self, message: str, cli: str | None = None) -> None:
        super().__init__(message)
        self.cli = message if cli is None else cli


# ----------------------------------------------------------------------------- numeric settings
# rule: (test, what it asks for, integers only). NaN and infinities never pass (a NaN loss weight would
# silently switch a loss term off; a NaN gamma acts as 0).
_RULES: dict[str, tuple[Callable[[Any], bool], str, bool]] = {
    "count": (lambda v: v >= 1, "an integer >= 1", True),
    "count0": (lambda v: v >= 0, "an integer >= 0", True),
    "integer": (lambda v: True, "an integer", True),
    "positive": (lambda v: v > 0, "a finite number > 0", False),
    "non_negative": (lambda v: v >= 0, "a finite number >= 0", False),
    "unit": (lambda v: 0 <= v <= 1, "a number in [0, 1]", False),
    "open_unit": (lambda v: 0 < v < 1, "a number in (0, 1)", False),
}
# setting: (rule, None allowed). TrainConfig checks all of these; `sadcl eval` and evaluate_model the few
# they take (batch_size, num_workers, threshold, img_size).
NUMBER_RULES: dict[str, tuple[str, bool]] = {
    "img_size": ("count", True),
    "gamma_neg": ("non_negative", False),
    "gamma_pos": ("non_negative", False),
    "asl_clip": ("unit", False),
    "asl_eps": ("positive", False),
    "sample_temperature": ("positive", False),
    "prototype_temperature": ("positive", False),
    "memory_threshold": ("unit", False),
    "prototype_threshold": ("unit", False),
    "prototype_batches": ("count", True),
    "epochs": ("count", False),
    "batch_size": ("count", False),
    "eval_batch_size": ("count", True),
    "lr": ("positive", False),
    "weight_decay": ("non_negative", False),
    "pct_start": ("open_unit", False),
    "ema_decay": ("unit", False),
    "clip_grad": ("positive", True),
    "seed": ("integer", False),
    "patience": ("count0", True),
    "threshold": ("unit", False),
    "stop_after_epochs": ("count", True),
    "num_workers": ("count0", False),
    "log_interval": ("count", False),
}


def _number_problem(value: Any, rule: str) -> str | None:
    """Why ``value`` breaks ``rule`` (None when it does not)."""
    test, wanted, integer = _RULES[rule]
    is_int = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if integer:
        ok = is_int and test(value)
    else:
        ok = (is_int or isinstance(value, (float, np.floating))) and math.isfinite(value) and test(value)
    return None if ok else f"must be {wanted}, got {value!r}"


def check_numbers(values: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigError` for the first of ``values`` (keyed by setting) that breaks its
    :data:`NUMBER_RULES` rule."""
    for key, value in values.items():
        rule, optional = NUMBER_RULES[key]
        problem = None if value is None and optional else _number_problem(value, rule)
        if problem is not None:
            raise ConfigError.about(key, problem)


@dataclass
class TrainConfig:
    """Everything that defines a fine-tuning run (defaults: the authors' recipe, REFERENCE d).

    Model: ``model`` (variant name), ``pretrained`` (its published weights), ``checkpoint`` (local
    safetensors), ``pretrained_backbone`` (ImageNet trunk only), ``model_args`` (SADCL constructor
    overrides, e.g. ``dropout``), ``img_size``. The label set always comes from the training data.
    Objective: ``objective`` ``"sadcl"`` | ``"asl"``; ``loss_weights`` (ASL, SSCL, PSCL);
    ``gamma_neg``/``gamma_pos``/``asl_clip``/``asl_eps`` (the recipe script uses γ− = 4, the released SADCL
    run used 0); ``sample_temperature``, ``prototype_temperature``; ``official_sample_loss`` (the authors'
    SSCL with its quirks); ``memory_threshold`` (bank update), ``prototype_threshold`` and
    ``prototype_batches`` (prototype initialisation, batches per process).
    Optimisation: ``epochs`` (OneCycle length), ``batch_size`` (global, split over processes), ``lr``,
    ``weight_decay``, ``pct_start``, ``ema_decay``, ``clip_grad`` (max gradient norm), ``amp``
    (``"bf16"`` | ``"fp16"`` (with a GradScaler) | ``"none"``; CUDA only), ``channels_last`` (CUDA only),
    ``compile`` (``torch.compile`` the training forward: minutes of compilation, then faster steps),
    ``augment`` (``"sadcl"``: multi-scale crop + flip; ``"baseline"``: cutout + RandAugment; ``"none"``;
    default by objective), ``flip``, ``seed`` (process ``r`` uses ``seed + r``), ``patience`` (early
    stopping as the authors, None disables), ``threshold`` (of CP/CR/…).
    Run: ``output_dir``, ``resume`` (a ``last.pt`` or run folder), ``stop_after_epochs`` (end this run
    early, to resume later: the schedule still spans ``epochs``), ``num_workers``, ``device``,
    ``progress`` (None: when stderr is a terminal), ``log_interval`` (steps between log records and
    finiteness checks), ``dist_url`` (process-group init method, default ``env://``).
    """

    data: DataSpec | None = None
    val_data: DataSpec | None = None
    output_dir: str = "runs/sadcl"
    # model
    model: str | None = None  # None: the --checkpoint file's own model, else DEFAULT_TRAIN_MODEL
    pretrained: bool = False
    checkpoint: str | None = None
    pretrained_backbone: bool = False
    model_args: dict[str, Any] = field(default_factory=dict)
    img_size: int | None = None
    # objective
    objective: str = "sadcl"
    loss_weights: tuple[float, float, float] = (1.0, 100.0, 50.0)
    gamma_neg: float = 4.0
    gamma_pos: float = 0.0
    asl_clip: float = 0.0
    asl_eps: float = 1e-5
    sample_temperature: float = 0.2
    prototype_temperature: float = 0.07
    official_sample_loss: bool = False
    memory_threshold: float = 0.8
    prototype_threshold: float = 0.85
    prototype_batches: int | None = None
    # optimisation
    epochs: int = 80
    batch_size: int = 64
    eval_batch_size: int | None = None
    lr: float = 5e-5
    weight_decay: float = 5e-3
    pct_start: float = 0.2
    ema_decay: float = 0.9998
    clip_grad: float | None = None
    amp: str = "bf16"
    channels_last: bool = True
    compile: bool = False
    augment: str | None = None
    flip: bool = True
    seed: int = 1
    patience: int | None = 8
    threshold: float = 0.5
    # run
    resume: str | None = None
    overwrite: bool = False
    stop_after_epochs: int | None = None
    num_workers: int = DEFAULT_WORKERS
    device: str | None = None
    progress: bool | None = None
    log_interval: int = 50
    dist_url: str | None = None

    # Settings that shape the trajectory: a resumed run must keep them to continue exactly.
    TRAJECTORY_KEYS = (
        "objective",
        "loss_weights",
        "gamma_neg",
        "gamma_pos",
        "asl_clip",
        "asl_eps",
        "sample_temperature",
        "prototype_temperature",
        "official_sample_loss",
        "memory_threshold",
        "epochs",
        "batch_size",
        "lr",
        "weight_decay",
        "pct_start",
        "ema_decay",
        "clip_grad",
        "amp",
        "augment",
        "flip",
        "seed",
        "img_size",
    )
    RUNTIME_KEYS = (
        "data",
        "val_data",
        "output_dir",
        "resume",
        "overwrite",
        "stop_after_epochs",
        "num_workers",
        "device",
        "progress",
        "log_interval",
        "dist_url",
        "patience",
        "threshold",
        "eval_batch_size",
        "compile",
    )
    # Run settings a resumed run may change, but then not bit-exactly: random augmentations are drawn per
    # data-loading worker, and compiled dropout draws other random numbers than eager dropout.
    EXACTNESS_KEYS = ("num_workers", "compile")

    def __post_init__(self) -> None:
        for key in ("data", "val_data"):
            value = getattr(self, key)
            if isinstance(value, Mapping):
                setattr(self, key, DataSpec(**value))
        self.output_dir = os.fspath(self.output_dir)
        if self.augment is None:
            self.augment = "sadcl" if self.objective == "sadcl" else "baseline"
        choices = {
            "objective": ("sadcl", "asl"),
            "amp": ("bf16", "fp16", "none"),
            "augment": ("sadcl", "baseline", "none"),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError.about(key, f"must be one of {', '.join(allowed)}; got {getattr(self, key)!r}")
        weights = self.loss_weights
        if (
            isinstance(weights, (str, bytes))
            or not isinstance(weights, Iterable)
            or len(weights := tuple(weights)) != 3  # type: ignore[arg-type]
            or any(_number_problem(w, "non_negative") for w in weights)
        ):
            raise ConfigError.about(
                "loss_weights",
                f"must be three finite numbers >= 0 (ASL, SSCL, PSCL), got {printable(self.loss_weights)}",
            )
        self.loss_weights = tuple(float(w) for w in weights)  # type: ignore[assignment]
        check_numbers({key: getattr(self, key) for key in NUMBER_RULES})
        if self.pretrained and self.checkpoint:
            raise ConfigError(
                "give either pretrained=True or checkpoint=..., not both",
                "give either --pretrained or --checkpoint, not both",
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}")
        return cls(**dict(values))

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, **settings: Any) -> TrainConfig:
        """The configuration a training checkpoint was written with, set to resume from it. ``settings``
        may change run settings (:attr:`RUNTIME_KEYS`); any other setting given must equal the run's
        (a :class:`ConfigError` names each that differs, with both values)."""
        ckpt_path = Path(path) / "last.pt" if Path(path).is_dir() else Path(path)
        stored = dict(load_training_checkpoint(ckpt_path, mmap=True)["config"])
        unknown = sorted(k for k in settings if k not in {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}")
        changed = [
            k for k, v in settings.items() if k not in cls.RUNTIME_KEYS and normalise(v) != normalise(stored.get(k))
        ]
        if changed:

            def listing(name: Callable[[str], str]) -> str:
                return ", ".join(
                    f"{name(k)} (the run has {printable(stored.get(k))}, given {printable(settings[k])})"
                    for k in changed
                )

            raise ConfigError(
                f"cannot change on resume: {listing(str)}; a resumed run keeps its settings to continue exactly "
                f"(start a new run from its weights, checkpoint='{ckpt_path.parent}/best.safetensors', to change them)",
                f"cannot change on resume: {listing(cli_flag)}; a resumed run keeps its settings to continue exactly "
                f"(start a new run with --checkpoint {ckpt_path.parent}/best.safetensors to change them)",
            )
        stored["output_dir"] = os.fspath(ckpt_path.parent)  # continue in the run's folder unless told otherwise
        stored["overwrite"] = False  # permission to replace files is given per command, never inherited
        stored.update({k: v for k, v in settings.items() if k in cls.RUNTIME_KEYS})
        stored["resume"] = os.fspath(ckpt_path)
        return cls.from_dict(stored)


# ----------------------------------------------------------------------------- settings by name
_FLAGS = {
    "output_dir": "--output",
    "model_args": "--model-arg",
    "channels_last": "--no-channels-last",
    "flip": "--no-flip",
    "progress": "--no-progress",
}


def cli_flag(key: str) -> str:
    """The ``sadcl train`` flag of a :class:`TrainConfig` setting (``output_dir`` → ``--output``)."""
    return _FLAGS.get(key, "--" + key.replace("_", "-"))


def normalise(value: Any) -> Any:
    """Comparable form of a config value (tuples and lists alike)."""
    if isinstance(value, (list, tuple)):
        return [normalise(v) for v in value]
    return value
