"""Fine-tuning SADCL (and its Query2Label baseline): the recipe's training loop, evaluation and exact resume.

The recipe (REFERENCE d): AdamW (lr 5e-5, weight decay 5e-3, one parameter group of every trainable
parameter), OneCycleLR stepped every iteration (pct_start 0.2; AdamW's β1 cycles 0.95 → 0.85 → 0.95),
an EMA of the weights (decay 0.9998) evaluated next to the raw model after every epoch, AMP on CUDA,
early stopping, and one of two objectives:

* ``objective="sadcl"``: ``ASL + 100·SSCL + 50·PSCL`` with a memory bank (the paper's step 2). Each step:
  ``h = forward_features(x)``, ``logits = forward_head(h)``, ``z = project(h)``, the second SSCL view is
  ``project(bank.read(B))`` (the bank is detached: only the projection head gets gradient through it), the
  prototypes are ``project(model.prototypes)``; then ``bank.update(h, y, logits)``. Before the first step
  the prototypes are initialised from the training images (eval transform) and the bank from them.
* ``objective="asl"``: the asymmetric loss alone (the Query2Label baseline, step 1).

Data parallel with ``torchrun`` (gloo on CPU, NCCL on CUDA): ``batch_size`` is the *global* batch; every
process keeps its own memory bank; the contrastive terms are computed on the embeddings gathered from all
processes, so ``W`` processes train exactly like one process on the union batch (up to float rounding).
The output folder receives ``last.pt`` (training checkpoint, every epoch, atomic), ``best.safetensors``
(publishable weights of the best raw/EMA model), ``log.jsonl`` and ``config.json``.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import inspect
import json
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from .._atomic import append_line, atomic_write_text, drop_partial_last_line, remove_stale_temporaries
from .._text import printable
from ..data import (
    CocoDataset,
    CSVDataset,
    FolderDataset,
    VOCDataset,
    eval_transform,
    train_transform,
)
from ..data.datasets import MultiLabelDataset, missing_files, unwrap_worker_errors
from ..data.images import ImageLoadError
from ..metrics import evaluate as compute_metrics
from ..model import SADCL
from ..data.preprocessing import create_transform
from ..zoo import create_model
from ..zoo.factory import model_from_args, model_from_header
from ..zoo.loading import header_for
from .checkpoint import (
    CHECKPOINT_FORMAT,
    atomic_torch_save,
    export_weights,
    load_training_checkpoint,
    rng_state,
    set_rng_state,
)
from .distributed import (
    DistInfo,
    ShardedBatchSampler,
    ShardSampler,
    all_gather,
    all_gather_with_grad,
    all_reduce,
    broadcast_object,
    cleanup_distributed,
    gather_objects,
    gather_strided,
    init_distributed,
)
from .ema import ModelEma
from .losses import (
    AsymmetricLoss,
    PrototypeContrastiveLoss,
    SADCLCriterion,
    SampleContrastiveLoss,
)
from .memory import MemoryBank, compute_prototypes, init_prototypes_

__all__ = [
    "DATA_FORMATS",
    "DATA_OPTIONS",
    "LOGGED_METRICS",
    "RUN_FILES",
    "ConfigError",
    "DataSpec",
    "EarlyStopping",
    "InexactResumeWarning",
    "NonFiniteLossError",
    "RunFinishedError",
    "TrainConfig",
    "Trainer",
    "build_dataset",
    "check_numbers",
    "config_from_options",
    "data_specs",
    "evaluate_checkpoint",
    "evaluate_model",
    "load_model",
    "parse_model_args",
    "predict_scores",
    "train",
]

DATA_FORMATS = ("csv", "coco", "voc", "folder")
# The paper's table columns (plus sklearn-convention mAP), logged each epoch; per-class AP stays out of the log.
LOGGED_METRICS = ("mAP", "mAP_sklearn", "CP", "CR", "CF1", "OP", "OR", "OF1",
                  "CP_top3", "CR_top3", "CF1_top3", "OP_top3", "OR_top3", "OF1_top3")
TERMS = ("loss", "asl", "sample", "prototype")  # logged loss terms: weighted total, then the unweighted terms
_CONSTRUCTOR_KEYS = tuple(p for p in inspect.signature(SADCL.__init__).parameters if p != "self")
DEFAULT_TRAIN_MODEL = "sadcl_coco_448"  # the paper's model, when neither --model nor --checkpoint is given
_DDP_PARAMS = inspect.signature(DistributedDataParallel.__init__).parameters


# Data-loading processes: 4, or fewer on a machine with fewer cores (more would only compete with training).
DEFAULT_WORKERS = min(4, os.cpu_count() or 1)


# The files a run writes into its folder (``--overwrite`` replaces these and nothing else).
RUN_FILES = ("last.pt", "best.safetensors", "config.json", "log.jsonl")


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or infinite: the run stops, and the last good checkpoint is kept."""


class ConfigError(ValueError):
    """A bad or conflicting run setting. ``str()`` names settings as Python keywords (``loss_weights``);
    :attr:`cli` says the same with the ``sadcl`` flags (``--loss-weights``)."""

    def __init__(self, message: str, cli: str | None = None) -> None:
        super().__init__(message)
        self.cli = message if cli is None else cli

    @classmethod
    def about(cls, key: str, problem: str) -> ConfigError:
        """``"<setting> <problem>"``, the setting named as a keyword and as a flag."""
        return cls(f"{key} {problem}", f"{_flag(key)} {problem}")


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
    "img_size": ("count", True), "gamma_neg": ("non_negative", False), "gamma_pos": ("non_negative", False),
    "asl_clip": ("unit", False), "asl_eps": ("positive", False), "sample_temperature": ("positive", False),
    "prototype_temperature": ("positive", False), "memory_threshold": ("unit", False),
    "prototype_threshold": ("unit", False), "prototype_batches": ("count", True), "epochs": ("count", False),
    "batch_size": ("count", False), "eval_batch_size": ("count", True), "lr": ("positive", False),
    "weight_decay": ("non_negative", False), "pct_start": ("open_unit", False), "ema_decay": ("unit", False),
    "clip_grad": ("positive", True), "seed": ("integer", False), "patience": ("count0", True),
    "threshold": ("unit", False), "stop_after_epochs": ("count", True), "num_workers": ("count0", False),
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


# ----------------------------------------------------------------------------- data
@dataclass
class DataSpec:
    """Where a multi-label dataset lives.

    ``format``: ``csv`` (``path`` = CSV file, ``images`` = image root, default the CSV's folder),
    ``coco`` (``path`` = ``instances_*.json``, ``images`` = image folder), ``voc`` (``path`` = a VOC root,
    ``split`` default ``trainval``, ``year``), ``folder`` (``path`` = labels file, ``images`` = image folder).
    ``label_names``: a label-name file fixing the label order (csv/folder). ``skip_bad`` drops unreadable images.
    """

    path: str
    format: str = "csv"
    images: str | None = None
    split: str | None = None
    year: str = "2007"
    label_names: str | None = None
    skip_bad: bool = False

    def __post_init__(self) -> None:
        self.path = os.fspath(self.path)
        self.images = None if self.images is None else os.fspath(self.images)
        if self.format not in DATA_FORMATS:
            raise ValueError(f"data format must be one of {', '.join(DATA_FORMATS)}, got {self.format!r}")
        if self.format in ("coco", "folder") and self.images is None:
            what = "the COCO image folder" if self.format == "coco" else "the image folder"
            raise ValueError(f"{self.format} data at {self.path} needs {what} (--images / DataSpec.images)")


def build_dataset(spec: DataSpec, transform: Any = None, label_names: Sequence[str] | None = None) -> Dataset:
    """The dataset ``spec`` describes, with ``transform``. ``label_names`` fixes the label order (csv/folder:
    a label outside it is an error naming the row; coco/voc have fixed label sets)."""
    names: Any = list(label_names) if label_names is not None else spec.label_names
    if spec.format == "csv":
        return CSVDataset(spec.path, image_root=spec.images, label_names=names, transform=transform,
                          skip_bad=spec.skip_bad)
    if spec.format == "coco":
        return CocoDataset(spec.path, spec.images, transform=transform, skip_bad=spec.skip_bad)
    if spec.format == "voc":
        return VOCDataset(spec.path, split=spec.split or "trainval", year=spec.year, transform=transform,
                          skip_bad=spec.skip_bad)
    return FolderDataset(spec.images, spec.path, transform=transform, skip_bad=spec.skip_bad, label_names=names)


def _label_order(dataset_names: Sequence[str], model_names: Sequence[str], what: str) -> list[int] | None:
    """Column ``i`` of the dataset is model output ``order[i]`` (``None`` when the orders already agree)."""
    dataset_names, model_names = list(dataset_names), list(model_names)
    if dataset_names == model_names:
        return None
    missing = [n for n in dataset_names if n not in model_names]
    extra = [n for n in model_names if n not in dataset_names]
    if missing or extra:
        raise ValueError(
            f"{what}: its labels do not match the model's ({len(dataset_names)} vs {len(model_names)}); "
            f"labels the model lacks: {missing[:10]}; model labels absent from the data: {extra[:10]}"
        )
    index = {n: i for i, n in enumerate(model_names)}
    return [index[n] for n in dataset_names]


def _with_transform(dataset: Dataset, transform: Any, what: str) -> Dataset:
    """A shallow copy of ``dataset`` using ``transform`` (datasets here keep it in ``.transform``)."""
    if not hasattr(dataset, "transform"):
        warnings.warn(f"{what}: {type(dataset).__name__} has no `transform` attribute; using it as given",
                      stacklevel=3)
        return dataset
    out = copy.copy(dataset)
    out.transform = transform
    return out


# ----------------------------------------------------------------------------- models
def load_model(
    name: str | None = None,
    *,
    checkpoint: str | os.PathLike | None = None,
    pretrained: bool = False,
    label_names: Sequence[str] | None = None,
    **overrides: Any,
) -> SADCL:
    """The starting model of a run, through the one factory (:func:`sadcl.zoo.factory.create_model`).

    ``checkpoint`` alone: the file's own architecture, labels and preprocessing. ``name`` with ``checkpoint``:
    that variant, which the file must match. ``name`` alone: the variant, with its published weights when
    ``pretrained``. Neither: :data:`DEFAULT_TRAIN_MODEL`. ``label_names`` different from the weights' re-initialise
    only the label-specific parameters (queries, classifier, prototypes); ``overrides`` are SADCL keywords."""
    kwargs = dict(overrides)
    if label_names is not None:
        kwargs["label_names"] = list(label_names)
    if checkpoint is not None:
        return model_from_args(name, checkpoint, **kwargs)
    return create_model(name or DEFAULT_TRAIN_MODEL, pretrained=pretrained, **kwargs)


# ----------------------------------------------------------------------------- configuration
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
        "objective", "loss_weights", "gamma_neg", "gamma_pos", "asl_clip", "asl_eps", "sample_temperature",
        "prototype_temperature", "official_sample_loss", "memory_threshold", "epochs", "batch_size", "lr",
        "weight_decay", "pct_start", "ema_decay", "clip_grad", "amp", "augment", "flip", "seed", "img_size",
    )
    RUNTIME_KEYS = ("data", "val_data", "output_dir", "resume", "overwrite", "stop_after_epochs", "num_workers",
                    "device", "progress", "log_interval", "dist_url", "patience", "threshold", "eval_batch_size",
                    "compile")
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
        choices = {"objective": ("sadcl", "asl"), "amp": ("bf16", "fp16", "none"),
                   "augment": ("sadcl", "baseline", "none")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError.about(key, f"must be one of {', '.join(allowed)}; got {getattr(self, key)!r}")
        weights = self.loss_weights
        if (isinstance(weights, (str, bytes)) or not isinstance(weights, Iterable)
                or len(weights := tuple(weights)) != 3  # type: ignore[arg-type]
                or any(_number_problem(w, "non_negative") for w in weights)):
            raise ConfigError.about("loss_weights", "must be three finite numbers >= 0 (ASL, SSCL, PSCL), "
                                    f"got {printable(self.loss_weights)}")
        self.loss_weights = tuple(float(w) for w in weights)  # type: ignore[assignment]
        check_numbers({key: getattr(self, key) for key in NUMBER_RULES})
        if self.pretrained and self.checkpoint:
            raise ConfigError("give either pretrained=True or checkpoint=..., not both",
                              "give either --pretrained or --checkpoint, not both")

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
        changed = [k for k, v in settings.items()
                   if k not in cls.RUNTIME_KEYS and _normalise(v) != _normalise(stored.get(k))]
        if changed:
            def listing(name: Callable[[str], str]) -> str:
                return ", ".join(f"{name(k)} (the run has {printable(stored.get(k))}, given {printable(settings[k])})"
                                 for k in changed)

            raise ConfigError(
                f"cannot change on resume: {listing(str)}; a resumed run keeps its settings to continue exactly "
                f"(start a new run from its weights, checkpoint='{ckpt_path.parent}/best.safetensors', to change them)",
                f"cannot change on resume: {listing(_flag)}; a resumed run keeps its settings to continue exactly "
                f"(start a new run with --checkpoint {ckpt_path.parent}/best.safetensors to change them)",
            )
        stored["output_dir"] = os.fspath(ckpt_path.parent)  # continue in the run's folder unless told otherwise
        stored["overwrite"] = False  # permission to replace files is given per command, never inherited
        stored.update({k: v for k, v in settings.items() if k in cls.RUNTIME_KEYS})
        stored["resume"] = os.fspath(ckpt_path)
        return cls.from_dict(stored)


# ----------------------------------------------------------------------------- early stopping
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


# ----------------------------------------------------------------------------- evaluation
def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


@torch.inference_mode()
def predict_scores(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> tuple[Tensor, Tensor]:
    """Sigmoid scores ``[N, C]`` (float32) and targets of every batch of ``loader``, on ``device``;
    the model runs in eval mode and gets its training mode back afterwards."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    scores: list[Tensor] = []
    targets: list[Tensor] = []
    try:
        for x, y in _unwrapped(loader):
            x = x.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with _autocast(device, amp_dtype):
                logits = model(x)
            scores.append(torch.sigmoid(logits.float()))
            targets.append(y.to(device, torch.float32))
    finally:
        model.train(was_training)
    if not scores:  # an empty shard (fewer images than processes)
        c = getattr(model, "num_classes", 0)
        return torch.zeros(0, c, device=device), torch.zeros(0, c, device=device)
    return torch.cat(scores), torch.cat(targets)


def _eval_loader(dataset: Dataset, batch_size: int, num_workers: int, pin: bool, info: DistInfo) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), info.rank, info.world_size),
                      num_workers=num_workers, pin_memory=pin)


def _metrics(scores: Tensor, targets: Tensor, order: list[int] | None, label_names: Sequence[str],
             threshold: float, quiet: bool) -> dict[str, Any]:
    if order is not None:
        scores = scores[:, order]
    with warnings.catch_warnings():
        if quiet:  # every process computes the same metrics; only rank 0 speaks
            warnings.simplefilter("ignore")
        return compute_metrics(scores.cpu().numpy(), targets.cpu().numpy(), threshold=threshold,
                               label_names=list(label_names))


def evaluate_model(
    model: SADCL,
    dataset: Dataset,
    *,
    batch_size: int = 32,
    num_workers: int = 2,
    device: str | torch.device | None = None,
    amp: str = "bf16",
    threshold: float = 0.5,
) -> dict[str, Any]:
    """The paper's metrics (:func:`sadcl.metrics.evaluate`) of ``model`` on ``dataset``.

    The dataset's labels must be the model's (any order). Under ``torchrun`` each process scores a shard
    and exactly ``len(dataset)`` rows are gathered (no padding duplicates).
    """
    check_numbers({"batch_size": batch_size, "num_workers": num_workers, "threshold": threshold})
    _check_image_files(dataset, "evaluation")
    info = init_distributed(_device_type(device))
    try:
        dev = _resolve_device(device, info)
        model.to(dev)
        names = list(dataset.label_names)
        order = _label_order(names, model.label_names, f"dataset {dataset!r}")
        loader = _eval_loader(dataset, batch_size, num_workers, dev.type == "cuda", info)
        scores, targets = predict_scores(model, loader, device=dev, amp_dtype=_amp_dtype(amp, dev))
        scores, targets = gather_strided(scores, len(dataset)), gather_strided(targets, len(dataset))
        return _metrics(scores, targets, order, names, threshold, quiet=not info.is_main)
    finally:
        cleanup_distributed(info)


def _device_type(device: str | torch.device | None) -> str:
    if device is not None:
        return torch.device(device).type
    return "cuda" if torch.cuda.is_available() else "cpu"


def _resolve_device(device: str | torch.device | None, info: DistInfo) -> torch.device:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", info.local_rank if info.world_size > 1 else torch.cuda.current_device())
    return dev


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype: bf16/fp16 on CUDA, none elsewhere (CPU autocast would only slow the recipe down)."""
    if device.type != "cuda" or amp == "none":
        return None
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        warnings.warn("this GPU has no bfloat16 support: using float16 autocast with a GradScaler instead",
                      stacklevel=3)
        return torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


# ----------------------------------------------------------------------------- training
class _TrainForward(nn.Module):
    """One training forward of SADCL as a module, so DDP sees (and synchronises) every parameter it uses."""

    def __init__(self, model: SADCL, project: bool, prototypes: bool) -> None:
        super().__init__()
        self.model, self.project, self.prototypes = model, project, prototypes

    def forward(self, x: Tensor, bank: Tensor | None = None) -> tuple[Tensor, ...]:
        h = self.model.forward_features(x)
        logits = self.model.forward_head(h)
        if not self.project:
            return h, logits
        z = self.model.project(h)
        bank_z = self.model.project(bank) if bank is not None else None
        protos_z = self.model.project(self.model.prototypes) if self.prototypes else None
        return h, logits, z, bank_z, protos_z


class _CountPositives:
    """Wraps a loader, counting positive labels per class (what a shard contributes to prototype means)."""

    def __init__(self, loader: Iterable[Any], num_classes: int, max_batches: int | None) -> None:
        self.loader, self.max_batches = loader, max_batches
        self.counts = torch.zeros(num_classes, dtype=torch.float64)

    def __iter__(self) -> Iterator[Any]:
        for i, (x, y) in enumerate(self.loader):
            if self.max_batches is not None and i >= self.max_batches:
                return
            self.counts += (y > 0.5).sum(0).to(torch.float64)
            yield x, y


class Trainer:
    """Fine-tunes a SADCL model with the recipe (see the module docstring); :meth:`fit` runs it.

    Datasets and the model come from ``config`` unless given: ``train_dataset``/``val_dataset`` are used
    with their own transforms (``prototype_dataset`` defaults to a copy of the training set with the eval
    transform); a given ``model`` is trained in place. ``on_epoch`` is called on rank 0 with each epoch's
    log record (losses, lr, throughput, validation metrics, best so far). Parameters outside the loss are
    frozen: with ``objective="asl"`` the projection head and the prototypes. ``fit`` runs once.
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        model: SADCL | None = None,
        train_dataset: Dataset | None = None,
        val_dataset: Dataset | None = None,
        prototype_dataset: Dataset | None = None,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.config = cfg = config
        self.on_epoch = on_epoch
        ckpt = load_training_checkpoint(cfg.resume) if cfg.resume else None
        if ckpt is not None:
            self._check_resumable(ckpt)
        _check_output(cfg)  # before any work: nothing of an earlier run is replaced unless asked
        self.dist = init_distributed(_device_type(cfg.device), cfg.dist_url)
        try:
            self._setup(ckpt, model, train_dataset, val_dataset, prototype_dataset)
        except BaseException:
            cleanup_distributed(self.dist)
            raise

    # -- setup ----------------------------------------------------------------------------------------
    def _check_resumable(self, ckpt: Mapping[str, Any]) -> None:
        """Refuse changed trajectory settings and a run with nothing left to train; warn about changed
        settings that keep the run valid but not bit-exact."""
        stored = ckpt["config"]
        now = self.config.to_dict()
        diffs = [f"{k}: checkpoint {stored.get(k)!r}, now {now[k]!r}" for k in TrainConfig.TRAJECTORY_KEYS
                 if _normalise(stored.get(k)) != _normalise(now[k])]
        if diffs:
            raise ValueError(
                f"cannot resume {self.config.resume} exactly: these settings differ from the checkpoint's: "
                + "; ".join(diffs) + ". Use TrainConfig.from_checkpoint (the CLI does) to keep them."
            )
        finished = _finished(ckpt, self.config)
        if finished is not None:
            run = _resume_folder(self.config)
            raise RunFinishedError(
                f"run {run} is already finished ({finished}); nothing was changed. To train further, start a new "
                f"run from its weights (checkpoint='{run / 'best.safetensors'}')",
                f"run {run} is already finished ({finished.replace('patience', '--patience')}); nothing was "
                f"changed. To train further, start a new run with --checkpoint {run / 'best.safetensors'}",
            )
        for key in TrainConfig.EXACTNESS_KEYS:
            if key in stored and _normalise(stored[key]) != _normalise(now[key]):
                why = "the run will not continue bit-exactly (random augmentations and dropout draw differently)"
                was, new = (("on" if v else "off") if isinstance(v, bool) else v for v in (stored[key], now[key]))
                warnings.warn(InexactResumeWarning(
                    f"resuming with {key}={now[key]!r} (the run used {stored[key]!r}): {why}",
                    f"resuming with {_flag(key)} {new} (the run used {was}): {why}; "
                    f"omit {_flag(key)} to keep the run's value"), stacklevel=3)

    def _setup(self, ckpt, model, train_dataset, val_dataset, prototype_dataset) -> None:
        cfg, info = self.config, self.dist
        self.device = _resolve_device(cfg.device, info)
        self.is_main = info.is_main
        self.out = Path(cfg.output_dir)
        if cfg.batch_size % info.world_size:
            raise ConfigError.about("batch_size", f"{cfg.batch_size} (global) is not divisible by the "
                                    f"{info.world_size} processes; pick a multiple")
        self.local_batch = cfg.batch_size // info.world_size
        self.pin = self.device.type == "cuda"
        if self.pin:
            torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick its fastest kernels (recipe)
        self.eval_batch = cfg.eval_batch_size or self.local_batch
        _seed_everything(cfg.seed)  # the same model initialisation in every process
        self._setup_data_and_model(ckpt, model, train_dataset, val_dataset, prototype_dataset)
        if self.is_main:  # everything checked: the run folder is written from here on
            _prepare_output(cfg)
        self._setup_objective(ckpt)
        self._setup_optimisation()
        self.tracker = EarlyStopping(cfg.patience)
        self.history: list[dict[str, Any]] = []
        self.start_epoch, self.global_step, self.step_lr = 0, 0, cfg.lr
        if ckpt is not None:
            self._load_state(ckpt)  # restores the RNG states last
        else:
            _seed_everything(cfg.seed + info.rank)  # per-process dropout / augmentation streams
            if self.is_main:
                atomic_write_text(self.out / "config.json", json.dumps(cfg.to_dict(), indent=2, default=str) + "\n")
        self._epochs_done = self.start_epoch  # epochs with a checkpoint on disk
        self._metrics_warned = False
        self._export_error: str | None = None

    def _setup_data_and_model(self, ckpt, model, train_dataset, val_dataset, prototype_dataset) -> None:
        """Datasets, samplers and the model; the label set comes from the training data."""
        cfg, info = self.config, self.dist
        built_here = train_dataset is None
        if built_here:
            if cfg.data is None:
                raise ValueError("no training data: set TrainConfig.data (sadcl train --data) or pass train_dataset")
            train_dataset = build_dataset(cfg.data, None)
        self.train_sampler = ShardedBatchSampler(len(train_dataset), self.local_batch, rank=info.rank,
                                                 world_size=info.world_size, seed=cfg.seed)
        label_names = list(train_dataset.label_names)
        val_built_here = val_dataset is None and cfg.val_data is not None
        if val_built_here:  # read now, its transform set below: its images are checked before the model is built
            val_dataset = build_dataset(cfg.val_data, None, label_names=label_names)
        _check_image_files(train_dataset, "training")
        _check_image_files(val_dataset, "validation")
        self.model = self._build_model(model, label_names, ckpt)
        pcfg = self.model.pretrained_cfg
        size = self.model.config["img_size"]
        norm = {"mean": pcfg.get("mean", (0.485, 0.456, 0.406)), "std": pcfg.get("std", (0.229, 0.224, 0.225)),
                "interpolation": pcfg.get("interpolation", "bilinear")}
        self.eval_tf = eval_transform(size, **norm)
        if built_here:  # datasets passed in keep their own transforms
            train_dataset.transform = (self.eval_tf if cfg.augment == "none"
                                       else train_transform(size, cfg.augment, flip=cfg.flip, **norm))
        if val_built_here:
            val_dataset.transform = self.eval_tf
        self.train_set, self.val_set, self.proto_set = train_dataset, val_dataset, prototype_dataset
        self.val_order = None
        if val_dataset is not None:
            self.val_order = _label_order(list(val_dataset.label_names), label_names, "validation data")
        self.train_loader = DataLoader(train_dataset, batch_sampler=self.train_sampler,
                                       num_workers=cfg.num_workers, pin_memory=self.pin)
        self.val_loader = (None if val_dataset is None else
                           _eval_loader(val_dataset, self.eval_batch, cfg.num_workers, self.pin, info))
        self.steps_per_epoch = len(self.train_sampler)
        self.amp_dtype = _amp_dtype(cfg.amp, self.device)
        self.channels_last = cfg.channels_last and self.device.type == "cuda"
        self.model.to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)

    def _setup_objective(self, ckpt) -> None:
        """Loss terms, what trains, prototypes, memory bank, and the (DDP-wrapped) training forward."""
        cfg = self.config
        self.sadcl = cfg.objective == "sadcl"
        w_asl, w_sample, w_proto = cfg.loss_weights if self.sadcl else (cfg.loss_weights[0], 0.0, 0.0)
        project, use_protos = w_sample > 0 or w_proto > 0, w_proto > 0
        # Parameters outside the loss are frozen: DDP requires every trainable parameter to get a gradient.
        if not project:
            self.model.proj_head.requires_grad_(False)
        if not use_protos:
            self.model.prototypes.requires_grad_(False)
        self.criterion = SADCLCriterion(
            AsymmetricLoss(cfg.gamma_neg, cfg.gamma_pos, cfg.asl_clip, cfg.asl_eps),
            SampleContrastiveLoss(cfg.sample_temperature, official=cfg.official_sample_loss),
            PrototypeContrastiveLoss(cfg.prototype_temperature),
            weights=(w_asl, w_sample, w_proto),
        )
        if self.sadcl and ckpt is None:
            self._init_prototypes()
        self.bank = None
        if w_sample > 0:
            self.bank = MemoryBank(self.local_batch, self.model.num_classes, self.model.hidden_dim,
                                   threshold=cfg.memory_threshold).to(self.device)
            self.bank.init_from_prototypes(self.model.prototypes)
        fwd: nn.Module = _TrainForward(self.model, project, use_protos)
        if self.dist.world_size > 1:
            # Buffers (frozen BN statistics) never change: no per-step broadcast. The banks live outside
            # the wrapped module, so each process keeps its own.
            no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in _DDP_PARAMS
                       else {"broadcast_buffers": False})
            fwd = DistributedDataParallel(fwd, device_ids=[self.device.index] if self.pin else None, **no_sync)
        # Compiled after the DDP wrap, as torch recommends (its optimizer splits the graph at bucket boundaries).
        self.forward_module = torch.compile(fwd) if cfg.compile else fwd

    def _setup_optimisation(self) -> None:
        """EMA, AdamW (one group of every trainable parameter), OneCycle per step, grad scaler (fp16 only)."""
        cfg = self.config
        self.ema = ModelEma(self.model, cfg.ema_decay)  # after DDP's initial broadcast: the same in every process
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        # Fused (one kernel for every parameter) on CUDA; the default for-each implementation elsewhere.
        fused = self.device.type == "cuda" or None
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer, max_lr=cfg.lr, epochs=cfg.epochs, steps_per_epoch=self.steps_per_epoch,
            pct_start=cfg.pct_start, cycle_momentum=True, base_momentum=0.85, max_momentum=0.95,
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    def _build_model(self, model: SADCL | None, label_names: list[str], ckpt: Mapping[str, Any] | None) -> SADCL:
        cfg = self.config
        if ckpt is not None:
            stored = dict(ckpt["model_config"])
            if stored.get("label_names") != label_names:
                raise ValueError(f"the training data's labels differ from the checkpoint's ({cfg.resume}); "
                                 "resume with the same data")
            if model is None:
                if "weights_header" in ckpt:  # the model as it was described when the run began
                    model = model_from_header(ckpt["weights_header"], f"{cfg.resume}")
                else:  # a last.pt of sadcl 0.1
                    model = create_model(cfg.model or DEFAULT_TRAIN_MODEL,
                                         **{k: v for k, v in stored.items() if k in _CONSTRUCTOR_KEYS})
            return model
        if model is not None:
            if model.label_names != label_names:
                raise ValueError(f"the model's labels {model.label_names[:5]}… differ from the training data's "
                                 f"{label_names[:5]}…; call model.reset_classifier(len(names), names) first")
            return model
        overrides = dict(cfg.model_args)
        if cfg.img_size is not None:
            overrides["img_size"] = cfg.img_size
        if not (cfg.pretrained or cfg.checkpoint):
            overrides["pretrained_backbone"] = cfg.pretrained_backbone
        return load_model(cfg.model, checkpoint=cfg.checkpoint, pretrained=cfg.pretrained,
                          label_names=label_names, **overrides)

    def _init_prototypes(self) -> None:
        """Prototypes = mean embedding of confidently predicted positives (eval transform), over all processes."""
        cfg, info = self.config, self.dist
        dataset = self.proto_set if self.proto_set is not None else _with_transform(
            self.train_set, self.eval_tf, "prototype initialisation")
        loader = _eval_loader(dataset, self.eval_batch, cfg.num_workers, self.pin, info)
        kwargs = {"threshold": cfg.prototype_threshold, "device": self.device}
        if info.world_size == 1:
            with unwrap_worker_errors():
                counts = init_prototypes_(self.model, loader, max_batches=cfg.prototype_batches, **kwargs)
        else:
            # Each process averages its shard; the shard means are combined weighted by their counts,
            # which gives the global means (confident positives, else all positives, else unchanged).
            counting = _CountPositives(loader, self.model.num_classes, cfg.prototype_batches)
            with unwrap_worker_errors():
                protos, n_conf = compute_prototypes(self.model, counting, **kwargs)
            p64, n_conf = protos.to(torch.float64), n_conf.to(torch.float64)
            n_all = counting.counts.to(self.device)
            sums = torch.stack([p64 * n_conf[:, None], p64 * n_all[:, None]])
            counts2 = torch.stack([n_conf, n_all])
            all_reduce(sums)
            all_reduce(counts2)
            current = self.model.prototypes.detach().to(torch.float64)
            merged = torch.where((counts2[0] > 0)[:, None], sums[0] / counts2[0].clamp(min=1)[:, None],
                                 torch.where((counts2[1] > 0)[:, None], sums[1] / counts2[1].clamp(min=1)[:, None],
                                             current))
            with torch.no_grad():
                self.model.prototypes.copy_(merged.to(self.model.prototypes.dtype))
            counts = counts2[0].long()
        self._log({"event": "prototypes", "classes_with_confident_positives": int((counts > 0).sum()),
                   "num_classes": self.model.num_classes, "threshold": cfg.prototype_threshold})

    def _load_state(self, ckpt: Mapping[str, Any]) -> None:
        info = self.dist
        self.model.load_state_dict(ckpt["model"])
        self.ema.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.tracker.load_state_dict(ckpt["tracker"])
        self.history = list(ckpt.get("history", []))
        self.start_epoch, self.global_step = int(ckpt["epoch"]), int(ckpt["global_step"])
        saved_world = int(ckpt["world_size"])
        exact = saved_world == info.world_size
        if self.bank is not None:
            # The banks side by side are one global bank whose slot i pairs with position i of the global
            # batch (ShardedBatchSampler), so they can be re-cut for another number of processes.
            bank = torch.cat(list(ckpt["banks"]), 0)
            rows = slice(info.rank * self.local_batch, (info.rank + 1) * self.local_batch)
            self.bank.bank.copy_(bank[rows])
        if not exact:
            warnings.warn(InexactResumeWarning(
                f"resuming a {saved_world}-process run with {info.world_size} processes: banks are re-split, "
                "but per-process random streams differ, so the run is not bit-exact"), stacklevel=3)
        rngs = ckpt["rng"]
        if info.rank < len(rngs):
            set_rng_state(rngs[info.rank])
        else:
            _seed_everything(self.config.seed + info.rank + 1000 * self.start_epoch)

    # -- logging --------------------------------------------------------------------------------------
    def _log(self, record: Mapping[str, Any]) -> None:
        if not self.is_main:
            return
        record = _finite_json({"time": round(time.time(), 3), **record})
        # One write of the whole line, undone if it fails (full disk): the log never holds a torn record.
        append_line(self.out / "log.jsonl", json.dumps(record, default=_json_default, allow_nan=False) + "\n")

    def _progress(self, epoch: int):
        enabled = self.config.progress
        if enabled is None:
            enabled = sys.stderr.isatty()
        from tqdm import tqdm

        return tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch}", unit="step", dynamic_ncols=True,
                    leave=False, disable=not (enabled and self.is_main))

    # -- one step ---------------------------------------------------------------------------------------
    def _losses(self, logits: Tensor, y: Tensor, z: Tensor | None, bank_z: Tensor | None,
                protos_z: Tensor | None) -> dict[str, Tensor]:
        """ASL on this process's batch; SSCL/PSCL on the global batch (embeddings gathered from all processes)."""
        crit = self.criterion
        w_asl, w_sample, w_proto = crit.weights
        terms: dict[str, Tensor] = {"asl": crit.asl(logits, y)}
        if z is not None:
            y_all = all_gather(y)
            if bank_z is not None:
                views = all_gather_with_grad(torch.stack([z, bank_z], 1))  # [B_global, 2, C, P]
                terms["sample"] = crit.sample(views, y_all)
                z_all = views[:, 0]
            else:
                z_all = all_gather_with_grad(z)
            if protos_z is not None:
                terms["prototype"] = crit.prototype(z_all, protos_z, y_all)
        weight = {"asl": w_asl, "sample": w_sample, "prototype": w_proto}
        terms["loss"] = sum(weight[k] * v for k, v in terms.items())
        return terms

    def _step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        cfg = self.config
        with _autocast(self.device, self.amp_dtype):
            bank_h = self.bank.read(x.shape[0]) if self.bank is not None else None
            out = self.forward_module(x, bank_h)
            h, logits = out[0], out[1]
            z, bank_z, protos_z = out[2:] if len(out) == 5 else (None, None, None)
            terms = self._losses(logits, y, z, bank_z, protos_z)
        if self.bank is not None:
            self.bank.update(h.detach(), y, logits.detach())  # detached: before or after backward is the same
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(terms["loss"]).backward()
        if cfg.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, cfg.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step_lr = self.optimizer.param_groups[0]["lr"]  # the lr this step used (logged)
        self.scheduler.step()
        self.ema.update(self.model)
        return terms

    # -- one epoch --------------------------------------------------------------------------------------
    def _train_one_epoch(self, epoch: int) -> dict[str, Any]:
        """Trains one epoch. Loss values stay on the device: they are summed there and their finiteness
        is tracked there (the first bad step and its terms), and read back only every ``log_interval``
        steps and at the end of the epoch (one host synchronisation each), never once per step."""
        cfg, dev = self.config, self.device
        self.model.train()
        self.train_sampler.set_epoch(epoch)
        window = torch.zeros(len(TERMS), device=dev)
        first_bad = torch.full((), -1, dtype=torch.long, device=dev)
        bad_terms = torch.zeros(len(TERMS), dtype=torch.bool, device=dev)
        zero = torch.zeros((), device=dev)
        totals = dict.fromkeys(TERMS, 0.0)
        seen, window_steps = 0, 0
        images_per_step = self.local_batch * self.dist.world_size
        t_epoch = t_window = time.perf_counter()
        bar = self._progress(epoch)
        try:
            for i, (x, y) in enumerate(_unwrapped(self.train_loader)):
                x = x.to(dev, non_blocking=True)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                y = y.to(dev, torch.float32, non_blocking=True)
                terms = self._step(x, y)
                values = torch.stack([terms.get(k, zero).detach().float() for k in TERMS])
                finite = torch.isfinite(values)
                newly_bad = (first_bad < 0) & ~finite.all()
                first_bad = torch.where(newly_bad, i, first_bad)
                bad_terms = torch.where(newly_bad, ~finite, bad_terms)
                window += values
                self.global_step += 1
                window_steps += 1
                bar.update(1)
                if window_steps == cfg.log_interval or i + 1 == self.steps_per_epoch:
                    means = self._check_window(epoch, window, window_steps, first_bad, bad_terms)
                    seen += window_steps
                    for k in TERMS:
                        totals[k] += means[k] * window_steps
                    now = time.perf_counter()
                    record = {"event": "step", "epoch": epoch, "step": i + 1, "global_step": self.global_step,
                              "lr": self.step_lr, **means,
                              "img_per_s": window_steps * images_per_step / max(now - t_window, 1e-9)}
                    self._log(record)
                    bar.set_postfix(loss=f"{means['loss']:.4g}", lr=f"{record['lr']:.3g}")
                    window.zero_()
                    window_steps, t_window = 0, now
        finally:
            bar.close()
        elapsed = time.perf_counter() - t_epoch
        return {**{k: totals[k] / max(seen, 1) for k in TERMS}, "lr": self.step_lr,
                "img_per_s": seen * images_per_step / max(elapsed, 1e-9), "train_time_s": elapsed}

    def _check_window(self, epoch: int, window: Tensor, steps: int, first_bad: Tensor,
                      bad_terms: Tensor) -> dict[str, float]:
        """Mean loss terms of the window over all processes; raises :class:`NonFiniteLossError` (on every
        process alike) when a term was NaN/inf at some step of this epoch."""
        bad_step = torch.where(first_bad < 0, torch.full_like(first_bad, 2**62), first_bad)
        all_reduce(window)
        all_reduce(bad_step, "min")
        flags = all_reduce(bad_terms.to(torch.int32), "max")
        means = (window / (steps * self.dist.world_size)).tolist()
        bad = int(bad_step.item())
        if bad < 2**62:
            which = [k for k, f in zip(TERMS, flags.tolist()) if f and k != "loss"] or ["loss"]
            global_step = epoch * self.steps_per_epoch + bad
            last = self.out / "last.pt"
            kept = (f"the last good checkpoint {last} (written after epoch {self._epochs_done - 1}) is kept"
                    if self._epochs_done > 0 and last.exists() else "no checkpoint had been written yet")
            message = (f"non-finite loss at epoch {epoch}, step {bad} (0-based; global step {global_step}): "
                       f"term(s) {', '.join(which)} became NaN or infinite; training stopped and {kept}. "
                       "Lower the learning rate (--lr), clip gradients (--clip-grad), or train in bf16/fp32.")
            self._log({"event": "nonfinite", "epoch": epoch, "step": bad, "global_step": global_step,
                       "terms": which})
            raise NonFiniteLossError(message)
        return dict(zip(TERMS, means))

    # -- evaluation and checkpoints --------------------------------------------------------------------
    def _validate(self) -> dict[str, dict[str, Any]] | None:
        if self.val_loader is None:
            return None
        n = len(self.val_set)
        names = list(self.val_set.label_names)
        results = {}
        for tag, net in (("raw", self.model), ("ema", self.ema.module)):
            scores, targets = predict_scores(net, self.val_loader, device=self.device, amp_dtype=self.amp_dtype,
                                             channels_last=self.channels_last)
            scores, targets = gather_strided(scores, n), gather_strided(targets, n)
            # Dataset warnings (e.g. classes without positives) once per run, from rank 0.
            results[tag] = _metrics(scores, targets, self.val_order, names, self.config.threshold,
                                    quiet=not self.is_main or self._metrics_warned)
            self._metrics_warned = True
        return results

    def _save_checkpoint(self, epoch: int) -> None:
        """Every process contributes its bank and RNG state; rank 0 writes ``last.pt`` atomically."""
        banks = gather_objects(self.bank.bank.detach().cpu() if self.bank is not None else None)
        rngs = gather_objects(rng_state())
        error, self._export_error = self._export_error, None
        if self.is_main and error is None:
            ckpt = {
                "format": CHECKPOINT_FORMAT, "epoch": epoch + 1, "global_step": self.global_step,
                "world_size": self.dist.world_size, "config": self.config.to_dict(),
                "model_config": dict(self.model.config), "model": self.model.state_dict(),
                "weights_header": header_for(self.model).to_json(),
                "ema": self.ema.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                "banks": banks if self.bank is not None else [], "rng": rngs,
                "tracker": self.tracker.state_dict(), "history": self.history,
            }
            try:
                atomic_torch_save(ckpt, self.out / "last.pt")
            except Exception as e:  # tell the other processes before raising, so none waits forever
                error = f"could not write {self.out / 'last.pt'}: {type(e).__name__}: {e}"
        error = broadcast_object(error)
        if error is not None:
            raise RuntimeError(error)

    def _export_best(self, net: nn.Module, epoch: int, source: str, metrics: Mapping[str, Any] | None) -> None:
        if not self.is_main:
            return
        info = {"epoch": epoch, "source": source, "objective": self.config.objective}
        if metrics is not None:
            info.update({k: metrics.get(k) for k in ("mAP", "CF1", "OF1")}, num_images=metrics.get("num_images"))
        try:
            export_weights(net, self.out / "best.safetensors", training=info)
        except Exception as e:  # reported to every process by the checkpoint step that follows
            self._export_error = f"could not write {self.out / 'best.safetensors'}: {type(e).__name__}: {e}"

    # -- the run ----------------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train from the current epoch to ``epochs`` (or early stop / ``stop_after_epochs``); returns a summary."""
        cfg = self.config
        stopped_early = False
        self._log({"event": "start", "epoch": self.start_epoch, "world_size": self.dist.world_size,
                   "device": str(self.device), "objective": cfg.objective,
                   "train_images": len(self.train_set), "val_images": len(self.val_set) if self.val_set else 0,
                   "steps_per_epoch": self.steps_per_epoch,
                   "trainable_params": sum(p.numel() for p in self.params), "resumed": cfg.resume is not None})
        try:
            for epoch in range(self.start_epoch, cfg.epochs):
                stats = self._train_one_epoch(epoch)
                val = self._validate()
                record: dict[str, Any] = {"event": "epoch", "epoch": epoch, "global_step": self.global_step, **stats}
                if val is not None:
                    raw, ema = val["raw"]["mAP"], val["ema"]["mAP"]
                    source = self.tracker.update(epoch, raw, ema)
                    if source is not None:
                        self._export_best(self.ema.module if source == "ema" else self.model, epoch, source,
                                          val[source])
                    record["val"] = {tag: {k: m[k] for k in LOGGED_METRICS} for tag, m in val.items()}
                else:  # nothing to select with: publish the latest EMA weights
                    self._export_best(self.ema.module, epoch, "ema (latest; no validation data)", None)
                record["best"] = {"mAP": self.tracker.best if val is not None else None,
                                  "epoch": self.tracker.best_epoch, "source": self.tracker.best_source}
                self.history.append(record)
                self._save_checkpoint(epoch)
                self._epochs_done = epoch + 1
                self._log(record)
                if self.on_epoch is not None and self.is_main:
                    self.on_epoch(record)
                if val is not None and self.tracker.should_stop(epoch, val["ema"]["mAP"]):
                    stopped_early = True
                    self._log({"event": "early_stop", "epoch": epoch, "best_epoch": self.tracker.best_epoch,
                               "patience": cfg.patience})
                    break
                if cfg.stop_after_epochs is not None and epoch + 1 - self.start_epoch >= cfg.stop_after_epochs:
                    break
        finally:
            cleanup_distributed(self.dist)
        best, best_path = None, self.out / "best.safetensors"
        if self.tracker.best_epoch >= 0:
            best = {"mAP": self.tracker.best, "epoch": self.tracker.best_epoch, "source": self.tracker.best_source}
        summary = {
            "rank": self.dist.rank, "output_dir": str(self.out), "epochs_completed": self._epochs_done,
            "epochs": cfg.epochs,
            "stopped_early": stopped_early, "best": best, "checkpoint": str(self.out / "last.pt"),
            "best_weights": str(best_path) if best_path.exists() else None, "history": self.history,
        }
        self._log({"event": "end", **{k: v for k, v in summary.items() if k not in ("history", "rank")}})
        return summary


# ----------------------------------------------------------------------------- command-line glue
DATA_OPTIONS = ("data", "images", "val_data", "val_images", "data_format", "split", "val_split", "voc_year",
                "label_names", "skip_bad")
_FLAGS = {"output_dir": "--output", "model_args": "--model-arg", "channels_last": "--no-channels-last",
          "flip": "--no-flip", "progress": "--no-progress"}


def _flag(key: str) -> str:
    return _FLAGS.get(key, "--" + key.replace("_", "-"))


def parse_model_args(items: Sequence[str] | Mapping[str, Any]) -> dict[str, Any]:
    """``["hidden_dim=32", "dropout=0"]`` → ``{"hidden_dim": 32, "dropout": 0}`` (values read as JSON, else text)."""
    if isinstance(items, Mapping):
        return dict(items)
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--model-arg expects KEY=VALUE (a SADCL constructor keyword), got {item!r}")
        if key.strip() not in _CONSTRUCTOR_KEYS:
            raise ValueError(f"--model-arg {key.strip()!r} is not a SADCL constructor keyword; valid: "
                             f"{', '.join(_CONSTRUCTOR_KEYS)}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def data_specs(options: Mapping[str, Any]) -> dict[str, DataSpec]:
    """``data``/``val_data`` specs from flat options (``data``, ``images``, ``data_format``, ``split`` …)."""
    o = dict(options)
    fmt, year = o.get("data_format", "csv"), str(o.get("voc_year", "2007"))
    specs: dict[str, DataSpec] = {}
    for key, images, split in (("data", "images", "split"), ("val_data", "val_images", "val_split")):
        if o.get(key) is None:
            if o.get(images) is not None:
                raise ValueError(f"{_flag(images)} was given without {_flag(key)}")
            continue
        default_split = ("trainval" if key == "data" else "test") if fmt == "voc" else None
        specs[key] = DataSpec(o[key], fmt, images=o.get(images), split=o.get(split) or default_split, year=year,
                              label_names=o.get("label_names") if key == "data" else None,
                              skip_bad=bool(o.get("skip_bad", False)))
    return specs


def config_from_options(options: Mapping[str, Any]) -> TrainConfig:
    """A :class:`TrainConfig` from the options a user gave (``TrainConfig`` field names plus
    :data:`DATA_OPTIONS`); everything not given keeps its recipe default. With ``resume`` the checkpoint's
    settings are kept and only run settings (data location, workers, device, output …) may be given."""
    opts = {k: v for k, v in options.items() if k not in DATA_OPTIONS}
    opts.update(data_specs({k: v for k, v in options.items() if k in DATA_OPTIONS}))
    if "model_args" in opts:
        opts["model_args"] = parse_model_args(opts["model_args"])
    if opts.get("resume"):
        resume = opts.pop("resume")
        return TrainConfig.from_checkpoint(resume, **opts)  # refuses changed trajectory settings
    if "data" not in opts:
        raise ValueError("no training data: give --data (and --data-format if it is not a CSV file)")
    return TrainConfig(**opts)


def evaluate_checkpoint(
    data: DataSpec,
    model: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    *,
    img_size: int | None = None,
    batch_size: int = 32,
    num_workers: int = DEFAULT_WORKERS,
    device: str | None = None,
    amp: str = "bf16",
    threshold: float = 0.5,
) -> dict[str, Any]:
    """Metrics on ``data`` of the model that ``model``/``checkpoint`` name (as on the command line: a variant's
    published weights, a sadcl ``.safetensors`` file, an export folder, ``hf-hub:``), with its own evaluation
    preprocessing at its resolution (or ``img_size``)."""
    overrides = {} if img_size is None else {"img_size": img_size}
    net = model_from_args(model, checkpoint, default=None, **overrides)
    dataset = build_dataset(data, create_transform(net),
                            label_names=net.label_names if data.format in ("csv", "folder") else None)
    results = evaluate_model(net, dataset, batch_size=batch_size, num_workers=num_workers, device=device, amp=amp,
                             threshold=threshold)
    return {"model": net.pretrained_cfg.get("source") or net.pretrained_cfg.get("architecture"),
            "checkpoint": None if checkpoint is None else os.fspath(checkpoint), "data": dataclasses.asdict(data),
            **results}


def train(config: TrainConfig, **kwargs: Any) -> dict[str, Any]:
    """Run :class:`Trainer` ``(config, **kwargs).fit()`` and return its summary (best metrics, paths, history)."""
    return Trainer(config, **kwargs).fit()


# ----------------------------------------------------------------------------- helpers
def _unwrapped(loader: Iterable[Any]) -> Iterator[Any]:
    """The batches of ``loader``; an error of a DataLoader worker arrives as the worker raised it (one line)."""
    with unwrap_worker_errors():
        yield from loader


def _check_image_files(dataset: Dataset | None, what: str) -> None:
    """Every image file of ``dataset`` (a dataset of image files) exists and is a regular file: one stat
    each, so a missing validation image stops the run before the first epoch, not after it."""
    if not isinstance(dataset, MultiLabelDataset):  # e.g. mosaics built in memory: no files to check
        return
    paths = dataset.paths
    missing = missing_files(paths)
    if missing:
        raise ImageLoadError(
            f"{what} image {printable(missing[0])} is missing or not a regular file ({len(missing)} of "
            f"{len(paths)} {what} images are; checked before any work). Fix the paths, or drop unreadable "
            "images with --skip-bad (DataSpec.skip_bad)"
        )


def _resume_folder(cfg: TrainConfig) -> Path | None:
    """The folder of the run ``cfg`` resumes (None for a new run)."""
    if not cfg.resume:
        return None
    resume = Path(cfg.resume)
    return resume if resume.is_dir() else resume.parent


def _resumes_in_place(cfg: TrainConfig) -> bool:
    run = _resume_folder(cfg)
    return run is not None and run.resolve() == Path(cfg.output_dir).resolve()


def _finished(ckpt: Mapping[str, Any], cfg: TrainConfig) -> str | None:
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
            return (f"it stopped early after epoch {done - 1} with patience {cfg.patience}; "
                    "a larger patience continues it")
    return None


def _check_output(cfg: TrainConfig) -> None:
    """Refuse an output folder holding anything (an earlier run, other files) unless the run resumes in it
    or ``overwrite`` is set; read-only, so it runs before any work."""
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError.about("output_dir", f"{out} is a file, not a folder; give a folder for the run")
    if cfg.overwrite or _resumes_in_place(cfg) or not out.is_dir():
        return
    names = sorted(entry.name for entry in out.iterdir())
    if not names:
        return
    names = [n for n in RUN_FILES if n in names] + [n for n in names if n not in RUN_FILES]
    shown = ", ".join(printable(n) for n in names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    run = "last.pt" in names
    replace = f"the files train writes ({', '.join(RUN_FILES)}; other files are kept)"
    raise ConfigError(
        f"output_dir {out} already holds {'a run' if run else 'files'} ({shown}); "
        + (f"continue it with resume='{out}', or " if run else "pick another output_dir, or ")
        + f"set overwrite=True to replace {replace}",
        f"--output {out} already holds {'a run' if run else 'files'} ({shown}); "
        + (f"continue it with --resume {out}, or " if run else "pick another --output, or ")
        + f"pass --overwrite to replace {replace}",
    )


def _prepare_output(cfg: TrainConfig) -> None:
    """Make the run folder ready to write (rank 0, once every check passed): remove temporary files our
    interrupted writes left, with ``overwrite`` the earlier run's files (only :data:`RUN_FILES`), and a
    log line torn by a killed process."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out, RUN_FILES)
    if cfg.overwrite and not _resumes_in_place(cfg):
        for name in RUN_FILES:
            if (out / name).is_file() or (out / name).is_symlink():
                (out / name).unlink()
    drop_partial_last_line(out / "log.jsonl")


def _normalise(value: Any) -> Any:
    """Comparable form of a config value (tuples and lists alike)."""
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    return value


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
