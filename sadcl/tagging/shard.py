"""Splitting a tagging job over ``torchrun`` processes, and putting the results back in input order.

The inputs are dealt in rounds of one batch per process: batch ``g`` of the input stream (``batch_size``
images) goes to rank ``g mod W``. Every process walks the same inputs (a walk is deterministic) and keeps its own
batches, so nothing but results crosses processes. After each round the ranks' results are gathered over a
gloo group (Python objects, whatever the device) and rank 0 writes them in rank order: batch by batch, the order
of one process. A failure on any rank is gathered the same way, so every process stops at the same round and
rank 0 reports it (no process waits forever for a peer that is gone).

The process group is joined here rather than through ``sadcl.train.distributed`` (the tagging job does not
depend on the training package); like it, it reads torchrun's ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``
through ``sadcl._torchrun``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any, TypeVar

from .._torchrun import env_int

T = TypeVar("T")

__all__ = ["Group", "PeerFailed", "join", "leave", "chunks", "dealt", "settle", "broadcast", "rounds"]


class PeerFailed(Exception):
    """Another process of the job failed; rank 0 reports it, this process stops quietly."""


@dataclass(frozen=True)
class Group:
    """This process's place in the job: ``rank`` of ``world``, ``local_rank`` on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1  # processes on this node (they share its cores)
    owns: bool = False  # join() created the process group, leave() destroys it

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def join() -> Group:
    """The process group torchrun describes (gloo: only Python objects travel), or one process alone."""
    world = env_int("WORLD_SIZE", 1)
    if world <= 1:
        return Group()
    import torch.distributed as dist

    rank, local_rank, local_world = env_int("RANK", 0), env_int("LOCAL_RANK", 0), env_int("LOCAL_WORLD_SIZE", world)
    if dist.is_initialized():
        return Group(dist.get_rank(), dist.get_world_size(), local_rank, local_world)
    dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=world)
    return Group(rank, world, local_rank, local_world, owns=True)


LEAVE_BARRIER_S = 60  # how long a finished rank waits for its peers to finish too


def leave(group: Group, finished: bool = False) -> None:
    """End the process group join() created. ``finished``: every rank ran the job to its end, so a barrier
    first keeps a rank from closing its connections while a peer still reads the last gather's data (gloo's
    thread can then abort the peer: "terminate called without an active exception", seen once in CI). After a
    failure no barrier: a peer may be gone already; and the barrier is bounded (``LEAVE_BARRIER_S``), since a
    peer can still fail after the last round (rank 0 writing its summary)."""
    if group.owns:
        import torch.distributed as dist

        if dist.is_initialized():
            if finished:
                from datetime import timedelta

                try:
                    dist.monitored_barrier(timeout=timedelta(seconds=LEAVE_BARRIER_S))
                except RuntimeError:  # a peer that stopped after the last round: this rank's result stands
                    pass
            dist.destroy_process_group()


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last one shorter, never empty)."""
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


def dealt(items: Iterable[T], batch_size: int, group: Group) -> Iterator[T]:
    """The items of this rank's batches: batch ``g`` of ``items`` belongs to rank ``g mod world``."""
    if group.world == 1:
        yield from items
        return
    for g, chunk in enumerate(chunks(items, batch_size)):
        if g % group.world == group.rank:
            yield from chunk


def _gather(group: Group, obj: Any) -> list[Any]:
    if group.world == 1:
        return [obj]
    import torch.distributed as dist

    parts: list[Any] = [None] * group.world
    dist.all_gather_object(parts, obj)
    return parts


def _message(error: BaseException | None) -> str | None:
    return None if error is None else str(error)


def _check(group: Group, error: BaseException | None, messages: list[str | None]) -> None:
    """Stop every rank if any failed: rank 0 raises its own error, or a peer's message naming the process;
    the other ranks raise :class:`PeerFailed` (only rank 0 prints)."""
    failed = next(((r, m) for r, m in enumerate(messages) if m is not None), None)
    if failed is None:
        return
    if group.is_main:
        if error is not None:
            raise error
        raise RuntimeError(f"process {failed[0]} of {group.world}: {failed[1]}")
    raise PeerFailed(failed[1])


def settle(group: Group, error: BaseException | None) -> None:
    """Every rank learns whether any failed (see :func:`_check`); a no-op when none did."""
    _check(group, error, _gather(group, _message(error)))


def broadcast(group: Group, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if group.world == 1:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def rounds(batches: Iterator[list[T]], batch_size: int, group: Group) -> Iterator[list[T]]:
    """This rank's ``batches`` (each ``batch_size`` long but the last) put together round by round: on rank 0,
    every rank's batch of the round in rank order, which is input order; on the others nothing (they send).

    The job ends with the first round holding a batch shorter than ``batch_size`` (the input ran out there).
    Close the generator when rank 0 stops consuming early (``contextlib.closing``): the other ranks then learn it
    in the round they wait in, and stop too."""
    while True:
        error: BaseException | None = None
        try:
            batch = next(batches, [])
        except Exception as e:  # gathered below: every rank stops at this round
            error, batch = e, []
        parts = _gather(group, (_message(error), batch))
        _check(group, error, [m for m, _ in parts])
        last = any(len(part) < batch_size for _, part in parts)
        if group.is_main:
            merged = [record for _, part in parts for record in part]
            try:
                if merged:
                    yield merged
            except GeneratorExit:  # rank 0's writer stopped (an error, Ctrl-C): the others wait for the next round
                if group.world > 1 and not last:
                    _gather(group, ("process 0 stopped writing", []))
                raise
        if last:
            return
