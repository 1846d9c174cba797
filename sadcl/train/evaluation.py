"""Scoring a model on a dataset and the paper's metrics of the scores, alone or sharded under ``torchrun``:
:func:`evaluate_model` (a model and a dataset), :func:`evaluate_checkpoint` (what ``sadcl eval`` names) and
the pieces the training loop's validation shares with them."""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..data.preprocessing import create_transform
from ..metrics import evaluate as compute_metrics
from ..model import SADCL
from ..zoo.factory import model_from_args
from .config import DEFAULT_WORKERS, check_numbers
from .data import DataSpec, build_dataset, check_image_files, label_order, unwrapped
from .distributed import DistInfo, ShardSampler, cleanup_distributed, gather_strided, init_distributed
from .runtime import amp_dtype, autocast, device_type, resolve_device

__all__ = ["LOGGED_METRICS", "dataset_scores", "eval_loader", "evaluate_checkpoint", "evaluate_model", "score_metrics"]

# The paper's table columns (plus sklearn-convention mAP), logged each epoch; per-class AP stays out of the log.
LOGGED_METRICS = (
    "mAP",
    "mAP_sklearn",
    "CP",
    "CR",
    "CF1",
    "OP",
    "OR",
    "OF1",
    "CP_top3",
    "CR_top3",
    "CF1_top3",
    "OP_top3",
    "OR_top3",
    "OF1_top3",
)


@torch.inference_mode()
def dataset_scores(
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
        for x, y in unwrapped(loader):
            x = x.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, amp_dtype):
                logits = model(x)
            scores.append(torch.sigmoid(logits.float()))
            targets.append(y.to(device, torch.float32))
    finally:
        model.train(was_training)
    if not scores:  # an empty shard (fewer images than processes)
        c = getattr(model, "num_classes", 0)
        return torch.zeros(0, c, device=device), torch.zeros(0, c, device=device)
    return torch.cat(scores), torch.cat(targets)


def eval_loader(dataset: Dataset, batch_size: int, num_workers: int, pin: bool, info: DistInfo) -> DataLoader:
    """A loader over this process's shard of ``dataset`` (in order, no padding)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=ShardSampler(len(dataset), info.rank, info.world_size),
        num_workers=num_workers,
        pin_memory=pin,
    )


def score_metrics(
    scores: Tensor, targets: Tensor, order: list[int] | None, label_names: Sequence[str], threshold: float, quiet: bool
) -> dict[str, Any]:
    """The paper's metrics of ``scores`` (model output order, reordered to the data's by ``order``)."""
    if order is not None:
        scores = scores[:, order]
    with warnings.catch_warnings():
        if quiet:  # every process computes the same metrics; only rank 0 speaks
            warnings.simplefilter("ignore")
        return compute_metrics(
            scores.cpu().numpy(), targets.cpu().numpy(), threshold=threshold, label_names=list(label_names)
        )


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
    check_image_files(dataset, "evaluation")
    info = init_distributed(device_type(device))
    try:
        dev = resolve_device(device, info)
        model.to(dev)
        names = list(dataset.label_names)
        order = label_order(names, model.label_names, f"dataset {dataset!r}")
        loader = eval_loader(dataset, batch_size, num_workers, dev.type == "cuda", info)
        scores, targets = dataset_scores(model, loader, device=dev, amp_dtype=amp_dtype(amp, dev))
        scores, targets = gather_strided(scores, len(dataset)), gather_strided(targets, len(dataset))
        return score_metrics(scores, targets, order, names, threshold, quiet=not info.is_main)
    finally:
        cleanup_distributed(info)


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
    dataset = build_dataset(
        data, create_transform(net), label_names=net.label_names if data.format in ("csv", "folder") else None
    )
    results = evaluate_model(
        net, dataset, batch_size=batch_size, num_workers=num_workers, device=device, amp=amp, threshold=threshold
    )
    return {
        "model": net.pretrained_cfg.get("source") or net.pretrained_cfg.get("architecture"),
        "checkpoint": None if checkpoint is None else os.fspath(checkpoint),
        "data": dataclasses.asdict(data),
        **results,
    }
