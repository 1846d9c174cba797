"""Training state of SADCL's dual contrastive learning: the memory bank and the class prototypes.

* :class:`MemoryBank` keeps, per batch position and class, the last *confidently predicted positive*
  label-level embedding (pre-projection decoder output). It is the second view of the sample-to-sample
  contrastive loss (SSCL). It is training state: save it with the training checkpoint (its ``state_dict``),
  never with published model weights.
* :func:`compute_prototypes` / :func:`init_prototypes_` build the class prototypes of the
  prototype-to-sample loss (PSCL) as the mean decoder embedding of confidently predicted positives;
  :func:`init_prototypes_sharded_` does it over the shards of all data-parallel processes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from .distributed import all_reduce
from .losses import as_class_matrix

__all__ = ["MemoryBank", "compute_prototypes", "init_prototypes_", "init_prototypes_sharded_"]


class MemoryBank(nn.Module):
    """Position-indexed memory bank ``bank [num_slots, num_classes, dim]`` (the authors' ``memorybank``).

    Slot ``b`` pairs with whatever image sits at batch position ``b``; ``bank[b, c]`` is either the class-``c``
    prototype or the last class-``c`` embedding of an image at position ``b`` that was labelled ``c`` and
    predicted with ``sigmoid(logit) > threshold`` (strict). Use ``num_slots`` = the per-process batch size.
    """

    bank: Tensor

    def __init__(self, num_slots: int, num_classes: int, dim: int, threshold: float = 0.8) -> None:
        super().__init__()
        if num_slots < 1 or num_classes < 1 or dim < 1:
            raise ValueError(
                f"MemoryBank: num_slots, num_classes and dim must be >= 1, got {num_slots}, {num_classes}, {dim}"
            )
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"MemoryBank: threshold is a probability in [0, 1), got {threshold}")
        self.num_slots, self.num_classes, self.dim = int(num_slots), int(num_classes), int(dim)
        self.threshold = float(threshold)
        # A persistent buffer: in the state_dict (training checkpoints), never in the optimizer.
        self.register_buffer("bank", torch.zeros(self.num_slots, self.num_classes, self.dim))

    def _check_batch(self, batch_size: int) -> None:
        if not 1 <= batch_size <= self.num_slots:
            raise ValueError(
                f"MemoryBank: batch size {batch_size} does not fit the bank's {self.num_slots} slots; build the "
                f"bank with num_slots >= the per-process training batch size"
            )

    @torch.no_grad()
    def init_from_prototypes(self, prototypes: Tensor) -> None:
        """Fill every slot with the class prototypes (``[C, D]`` or ``[1, C, D]``, pre-projection)."""
        p = as_class_matrix(prototypes.detach(), self.num_classes, self.dim, "MemoryBank.init_from_prototypes")
        self.bank.copy_(p.to(self.bank.dtype).expand_as(self.bank))

    @torch.no_grad()
    def update(self, embeddings: Tensor, targets: Tensor, logits: Tensor) -> None:
        """Overwrite ``bank[b, c] ← embeddings[b, c]`` where ``targets[b, c]`` is 1 and ``σ(logits[b, c])``
        exceeds the threshold (strict: exactly the threshold, in the logits' precision, leaves the slot as is).

        ``embeddings [B, C, D]`` are the pre-projection decoder outputs (stored detached), ``B <= num_slots``.
        On accelerators: one ``torch.where`` over the first ``B`` slots, with no host synchronisation. On the
        CPU (nothing to synchronise): only the selected rows are gathered and written, about ``B·3`` of the
        ``B·C`` rows on COCO, instead of rewriting all ``B·C·D`` entries (benchmarks/bench_memory_bank.py).
        """
        if embeddings.dim() != 3 or tuple(embeddings.shape[1:]) != (self.num_classes, self.dim):
            raise ValueError(
                f"MemoryBank.update: embeddings must be [B, {self.num_classes}, {self.dim}], "
                f"got {list(embeddings.shape)}"
            )
        B = embeddings.shape[0]
        self._check_batch(B)
        if tuple(targets.shape) != (B, self.num_classes) or tuple(logits.shape) != (B, self.num_classes):
            raise ValueError(
                f"MemoryBank.update: targets and logits must be [B, C] = [{B}, {self.num_classes}], "
                f"got {list(targets.shape)} and {list(logits.shape)}"
            )
        positive = targets if targets.dtype == torch.bool else targets > 0.5
        # Compare in the logits' precision (at least float32), like the authors' `sigmoid(x) > 0.8`.
        x = logits.detach()
        x = x if x.dtype in (torch.float32, torch.float64) else x.float()
        confident = torch.sigmoid(x) > self.threshold
        mask = positive & confident
        if self.bank.device.type == "cpu" and embeddings.device.type == "cpu" and self.bank.is_contiguous():
            # Row (b, c) of the flattened [B·C, D] batch is row b·C + c of the flattened bank.
            rows = mask.to(self.bank.device).flatten().nonzero().squeeze(1)
            picked = embeddings.detach().reshape(-1, self.dim).index_select(0, rows)
            self.bank.view(-1, self.dim).index_copy_(0, rows, picked.to(self.bank.dtype))
        else:  # written in place (out= the slots themselves): no temporary of the bank's size
            slots = self.bank[:B]
            torch.where(mask.to(self.bank.device)[..., None], embeddings.detach().to(self.bank), slots, out=slots)

    def read(self, batch_size: int) -> Tensor:
        """The first ``batch_size`` slots ``[B, C, D]``, as a copy.

        A copy because the recipe updates the bank after the losses but *before* ``backward``: the projection
        head saves its input for the weight gradient, and an in-place update of a view would invalidate it.
        """
        self._check_batch(int(batch_size))
        return self.bank[:batch_size].clone()

    def extra_repr(self) -> str:
        return f"num_slots={self.num_slots}, num_classes={self.num_classes}, dim={self.dim}, threshold={self.threshold}"


def _split_batch(batch: Any) -> tuple[Tensor, Tensor]:
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise TypeError(f"compute_prototypes: the loader must yield (images, targets) batches, got {type(batch).__name__}")


def compute_prototypes(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    threshold: float = 0.85,
    device: torch.device | str | None = None,
    max_batches: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Class prototypes ``[C, D]`` = mean decoder embedding ``h[b, c]`` over training samples labelled ``c``
    and predicted with ``sigmoid(logit[b, c]) > threshold`` (how the authors' ``*_085.npy`` files appear to
    have been made, REFERENCE a.8), and the number of such confident positives per class ``[C]`` (int64).

    Fallbacks: a class with no confident positive uses the mean over all its positives (its count is 0);
    a class with no positive at all keeps the model's current prototype row. The model (``forward_features``
    → ``h [B, C, D]``, ``forward_head(h)`` → logits, parameter ``prototypes``) runs in eval mode under
    ``torch.inference_mode``; its training mode is restored afterwards.
    """
    current = model.prototypes.detach()
    C, D = current.shape[-2], current.shape[-1]
    current = as_class_matrix(current, C, D, "compute_prototypes: model.prototypes")
    device = torch.device(device) if device is not None else current.device
    # Float64 sums over a whole training set (MPS has no float64).
    acc = torch.float32 if device.type == "mps" else torch.float64
    sum_conf = torch.zeros(C, D, dtype=acc, device=device)
    sum_all = torch.zeros(C, D, dtype=acc, device=device)
    n_conf = torch.zeros(C, dtype=torch.int64, device=device)
    n_all = torch.zeros(C, dtype=torch.int64, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for i, batch in enumerate(loader):
                if max_batches is not None and i >= max_batches:
                    break
                images, targets = _split_batch(batch)
                h = model.forward_features(images.to(device))
                logits = model.forward_head(h)
                if h.shape[1:] != (C, D) or logits.shape != h.shape[:2] or targets.shape != logits.shape:
                    raise ValueError(
                        f"compute_prototypes: expected h [B, {C}, {D}], logits and targets [B, {C}]; got h "
                        f"{list(h.shape)}, logits {list(logits.shape)}, targets {list(targets.shape)}"
                    )
                pos = targets.to(device)
                pos = pos if pos.dtype == torch.bool else pos > 0.5
                prob = torch.sigmoid(logits if logits.dtype == torch.float64 else logits.float())
                conf = pos & (prob > threshold)
                h = h.to(acc)
                sum_all += torch.einsum("bc,bcd->cd", pos.to(acc), h)
                sum_conf += torch.einsum("bc,bcd->cd", conf.to(acc), h)
                n_all += pos.sum(0)
                n_conf += conf.sum(0)
    finally:
        model.train(was_training)
    mean_conf = sum_conf / n_conf.clamp(min=1)[:, None]
    mean_all = sum_all / n_all.clamp(min=1)[:, None]
    protos = torch.where(
        (n_conf > 0)[:, None], mean_conf, torch.where((n_all > 0)[:, None], mean_all, current.to(device, acc))
    )
    return protos.to(current.dtype), n_conf


def init_prototypes_(model: nn.Module, loader: Iterable[Any], **kwargs: Any) -> Tensor:
    """Compute the prototypes (:func:`compute_prototypes`) and copy them into ``model.prototypes`` in place.

    Returns the per-class counts of confident positives (0 = fallback used for that class).
    """
    protos, counts = compute_prototypes(model, loader, **kwargs)
    with torch.no_grad():
        model.prototypes.copy_(protos.reshape(model.prototypes.shape).to(model.prototypes))
    return counts


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


def init_prototypes_sharded_(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    max_batches: int | None = None,
    threshold: float = 0.85,
    device: torch.device | str | None = None,
) -> Tensor:
    """:func:`init_prototypes_` over the shards of all processes (``loader`` yields this process's shard):
    every process ends with the same global prototypes; returns the global counts of confident positives."""
    # Each process averages its shard; the shard means are combined weighted by their counts,
    # which gives the global means (confident positives, else all positives, else unchanged).
    counting = _CountPositives(loader, model.num_classes, max_batches)
    protos, n_conf = compute_prototypes(model, counting, threshold=threshold, device=device)
    p64, n_conf = protos.to(torch.float64), n_conf.to(torch.float64)
    n_all = counting.counts.to(device)
    sums = torch.stack([p64 * n_conf[:, None], p64 * n_all[:, None]])
    counts2 = torch.stack([n_conf, n_all])
    all_reduce(sums)
    all_reduce(counts2)
    current = model.prototypes.detach().to(torch.float64)
    merged = torch.where(
        (counts2[0] > 0)[:, None],
        sums[0] / counts2[0].clamp(min=1)[:, None],
        torch.where((counts2[1] > 0)[:, None], sums[1] / counts2[1].clamp(min=1)[:, None], current),
    )
    with torch.no_grad():
        model.prototypes.copy_(merged.to(model.prototypes.dtype))
    return counts2[0].long()
