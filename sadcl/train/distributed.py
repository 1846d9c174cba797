"""Data-parallel training helpers: process-group setup (torchrun), samplers, and gathers.

* One process per device, started by ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` in the
  environment); NCCL on CUDA, gloo on CPU, and a plain single process when ``WORLD_SIZE`` is unset or 1
  (no process group, no CUDA needed: the authors' code initialises NCCL even for one process).
* :class:`ShardedBatchSampler` cuts each *global* batch of a seeded permutation into per-rank slices, so
  the samples a step sees, and their order, do not depend on the number of processes: ``W`` processes
  with batch ``B`` each see exactly what one process with batch ``W·B`` sees.
* :func:`all_gather_with_grad` gathers embeddings for the contrastive losses on the global batch;
  :func:`gather_strided` collects evaluation outputs without the duplicated rows a padded
  ``DistributedSampler`` would add.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import Sampler

from .._torchrun import env_int

__all__ = [
    "DistInfo",
    "ShardSampler",
    "ShardedBatchSampler",
    "all_gather",
    "all_gather_with_grad",
    "all_reduce",
    "broadcast_object",
    "cleanup_distributed",
    "gather_objects",
    "gather_strided",
    "init_distributed",
    "is_distributed",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size``, its ``local_rank`` on the node, and
    whether :func:`init_distributed` created the process group (and so must destroy it)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def init_distributed(device_type: str = "cpu", init_method: str | None = None) -> DistInfo:
    """Join the process group described by the environment (torchrun), or run as one process.

    Uses an existing process group when there is one. ``init_method`` defaults to ``env://``
    (``MASTER_ADDR``/``MASTER_PORT``); a ``file://`` URL also works. The backend is NCCL for CUDA
    devices and gloo otherwise.
    """
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), env_int("LOCAL_RANK", 0), owns_group=False)
    world = env_int("WORLD_SIZE", 1)
    if world <= 1:
        return DistInfo()
    if not dist.is_available():
        raise RuntimeError(f"WORLD_SIZE={world} but this PyTorch build has no torch.distributed support")
    rank, local_rank = env_int("RANK", 0), env_int("LOCAL_RANK", 0)
    backend = "nccl" if device_type == "cuda" and dist.is_nccl_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend, init_method=init_method or "env://", rank=rank, world_size=world)
    return DistInfo(rank, world, local_rank, owns_group=True)


def cleanup_distributed(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- samplers
class ShardedBatchSampler(Sampler[list[int]]):
    """Per-rank training batches cut from global batches of a per-epoch permutation (drop-last).

    Epoch ``e`` permutes the ``n`` indices with ``torch.Generator().manual_seed(seed + e)`` (or keeps them in
    order with ``shuffle=False``), cuts global batches of ``batch_size · world_size`` and yields slice
    ``rank`` of each. The order is a function of ``(seed, epoch)`` only, which is what makes a resumed run
    see the same batches as an uninterrupted one. Call :meth:`set_epoch` before each epoch.
    """

    def __init__(
        self, n: int, batch_size: int, *, rank: int = 0, world_size: int = 1, shuffle: bool = True, seed: int = 0
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        global_batch = batch_size * world_size
        if n < global_batch:
            raise ValueError(
                f"the training set has {n} images, fewer than one global batch of {global_batch} "
                f"({world_size} process(es) × {batch_size}); lower the batch size or add data"
            )
        self.n, self.batch_size, self.rank, self.world_size = n, batch_size, rank, world_size
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n // (self.batch_size * self.world_size)

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(self.n)
        global_batch = self.batch_size * self.world_size
        for i in range(len(self)):
            start = i * global_batch + self.rank * self.batch_size
            yield order[start : start + self.batch_size].tolist()


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + W, rank + 2W, …`` of ``n``: every sample exactly once over all ranks, no padding."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1) -> None:
        self.n, self.rank, self.world_size = n, rank, world_size

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))


# ----------------------------------------------------------------------------- collectives
class _GatherWithGrad(torch.autograd.Function):
    """``all_gather`` along dim 0 whose backward *sums* the incoming gradients over ranks.

    Every rank evaluates the same global-batch loss on the gathered tensor, so the gradient of rank ``r``'s
    rows is the sum of the ``W`` identical copies, ``W · ∂L/∂x_r``; DDP's gradient averaging then divides by
    ``W``, leaving exactly the gradient of the global-batch loss.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:  # type: ignore[override]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, 0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        world, rank = dist.get_world_size(), dist.get_rank()
        n = grad.shape[0] // world
        if dist.get_backend() == "nccl":
            out = torch.empty_like(grad[:n])
            dist.reduce_scatter_tensor(out, grad)
            return out
        dist.all_reduce(grad)  # gloo has no reduce_scatter: reduce everything, keep our rows
        return grad[rank * n : (rank + 1) * n]


def all_gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate every rank's ``x`` (same shape everywhere) along dim 0, differentiably; identity for one process."""
    return _GatherWithGrad.apply(x) if is_distributed() else x


@torch.no_grad()
def all_gather(x: Tensor) -> Tensor:
    """Concatenate every rank's ``x`` (same shape everywhere) along dim 0, without gradient."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, 0)


def all_reduce(x: Tensor, op: str = "sum") -> Tensor:
    """In-place all-reduce (``"sum"``, ``"max"`` or ``"min"``); returns ``x``. A no-op for one process."""
    if is_distributed():
        dist.all_reduce(x, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op])
    return x


@torch.no_grad()
def gather_strided(local: Tensor, total: int) -> Tensor:
    """Reassemble ``total`` rows in dataset order from shards laid out by :class:`ShardSampler`.

    Rank ``r`` holds rows ``r, r + W, …``; shards are padded to equal length for ``all_gather`` and the
    padding is dropped, so the result has exactly ``total`` rows (no duplicated samples in the metrics).
    """
    if not is_distributed():
        if local.shape[0] != total:
            raise RuntimeError(f"gather_strided: got {local.shape[0]} rows, expected {total}")
        return local
    world = dist.get_world_size()
    per = math.ceil(total / world)
    padded = local.new_zeros((per, *local.shape[1:]))
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    out = local.new_empty((total, *local.shape[1:]))
    for r, part in enumerate(parts):
        out[r::world] = part[: len(range(r, total, world))]
    return out


def gather_objects(obj: Any) -> list[Any] | None:
    """Every rank's picklable ``obj`` as a list on rank 0 (``None`` elsewhere); ``[obj]`` for one process."""
    if not is_distributed():
        return [obj]
    out: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's picklable ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
