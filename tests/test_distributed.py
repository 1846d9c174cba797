"""Data-parallel training on CPU (gloo): two processes with batch B each train like one process with batch 2B.

The comparison is made meaningful by removing every source of legitimate difference: the same seed (same
initial weights), dropout 0, no augmentation (the evaluation transform), and a sampler whose global batches do
not depend on the number of processes (ShardedBatchSampler: rank r takes slice r of each global batch, so the
one-process batch is the two ranks' batches in rank order, and bank slot i pairs with the same image). ASL is a
per-process mean that DDP averages; the contrastive terms are computed on embeddings gathered from both ranks
(the gather's backward sums, DDP divides by 2). The memory threshold is 0 so that every positive overwrites
its bank slot (the banks then carry real embeddings, not only prototypes).

What remains is float rounding (other batch shapes and summation orders, float32 prototype merging), which
Adam's per-element normalisation amplifies where a gradient is tiny. Two consequences shape the comparison:
the key bias of every attention (rows d:2d of ``in_proj_bias``) gets an exactly zero gradient in exact
arithmetic (softmax is shift-invariant), so Adam turns pure rounding noise into ±lr steps there in both runs;
those slices are left out. The image size is 64 (a 2 × 2 feature grid): with one cell the attention weights
are constant and the query/key projections would be in the same situation.

Measured (lr 3e-3, 4 steps, weights moving by ≈ 6e-3): ≤ 1.5e-5 on weights, ≤ 1e-6 on bank embeddings,
≤ 3e-7 relative on the per-step losses; the tolerances below keep a margin. A missing gather or a gather
whose backward does not sum over ranks changes the contrastive gradient by a factor 2 relative to ASL's and
the losses from the second step on, far beyond them.
"""

from __future__ import annotations

import itertools
import json
import os
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from fakedata import write_banded_fashion

from sadcl.data import MosaicDataset, eval_transform
from sadcl.train.checkpoint import load_training_checkpoint
from sadcl.train.config import TrainConfig
from sadcl.train.distributed import ShardedBatchSampler, ShardSampler, gather_strided
from sadcl.train.trainer import Trainer, train

pytestmark = pytest.mark.filterwarnings("ignore::sadcl.metrics.NoPositiveClassWarning")
WEIGHT_ATOL = 1e-4  # model and EMA weights (measured ≤ 1.5e-5)
BANK_ATOL = 1e-5  # memory-bank embeddings (measured ≤ 1e-6)
LOSS_RTOL = 1e-5  # per-step loss terms (measured ≤ 3e-7)
SIZE = 64  # a 2 × 2 feature grid: with one cell the attention softmax is constant and q/k get no gradient
TERMS = ("loss", "asl", "sample", "prototype")


def make_datasets(root: Path):
    tf = eval_transform(SIZE)  # no augmentation randomness
    return MosaicDataset("train", 16, 0, transform=tf, root=root), MosaicDataset("test", 7, 1, transform=tf, root=root)


def make_config(out: Path, **kw) -> TrainConfig:
    return TrainConfig(
        output_dir=str(out),
        model="sadcl_tiny",
        img_size=SIZE,
        epochs=2,
        batch_size=8,
        lr=3e-3,
        model_args=dict(hidden_dim=32, ffn_dim=32, proj_dim=16, dropout=0.0),
        memory_threshold=0.0,
        num_workers=0,
        log_interval=1,
        progress=False,
        **kw,
    )


def _worker(rank: int, world: int, root: str, out: str, init_file: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    train_ds, val_ds = make_datasets(Path(root))
    # A file:// rendezvous: no TCP store, and gloo's own sockets stay on the loopback interface.
    train(make_config(Path(out), dist_url=f"file://{init_file}"), train_dataset=train_ds, val_dataset=val_ds)


def run_two_processes(root: Path, out: Path, init_file: Path, timeout_s: float = 120.0) -> None:
    ctx = mp.start_processes(
        _worker, args=(2, str(root), str(out), str(init_file)), nprocs=2, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + timeout_s
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the two gloo processes did not finish within {timeout_s} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()


def comparable(state: dict, key: str) -> torch.Tensor:
    """The tensor without the attention key-bias slice (its gradient is exactly zero: see the module docstring)."""
    v = state[key]
    if key.endswith("in_proj_bias"):
        d = v.shape[0] // 3
        v = torch.cat([v[:d], v[2 * d :]])
    return v


def steps(out: Path) -> list[dict]:
    return [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if r["event"] == "step"]


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_on_the_union_batch(tmp_path):
    root = tmp_path / "fmnist"
    root.mkdir()
    write_banded_fashion(root, 40, 20)
    run_two_processes(root, tmp_path / "ddp", tmp_path / "rendezvous")

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_ds, val_ds = make_datasets(root)
        single = Trainer(make_config(tmp_path / "single"), train_dataset=train_ds, val_dataset=val_ds)
        initial = {k: v.clone() for k, v in single.model.state_dict().items()}
        single.fit()
    finally:
        torch.set_num_threads(threads)

    one, two = load_training_checkpoint(tmp_path / "single"), load_training_checkpoint(tmp_path / "ddp")
    assert two["world_size"] == 2 and len(two["banks"]) == 2 and two["banks"][0].shape[0] == 4
    moved = max((one["model"][k] - initial[k]).abs().max().item() for k in initial)
    assert moved > 20 * WEIGHT_ATOL  # the weights really trained
    for name in ("model", "ema"):
        assert one[name].keys() == two[name].keys()
        for k in one[name]:
            torch.testing.assert_close(
                comparable(two[name], k), comparable(one[name], k), rtol=0, atol=WEIGHT_ATOL, msg=f"{name} {k}"
            )
    # Per-process banks side by side = the one-process bank (slot i ↔ position i of the global batch).
    torch.testing.assert_close(torch.cat(two["banks"]), one["banks"][0], rtol=0, atol=BANK_ATOL)
    assert not torch.equal(one["banks"][0][0], one["banks"][0][1])  # embeddings were written, not only prototypes

    s1, s2 = steps(tmp_path / "single"), steps(tmp_path / "ddp")
    assert len(s1) == len(s2) == 4
    for a, b in zip(s1, s2):
        assert all(a[t] > 0 for t in TERMS)
        for t in TERMS:
            assert b[t] == pytest.approx(a[t], rel=LOSS_RTOL), (t, a, b)
        assert b["lr"] == pytest.approx(a["lr"], rel=1e-12)
    # Evaluation gathers exactly the 7 validation images (no padding duplicates), with the same metrics.
    for r1, r2 in zip(one["history"], two["history"]):
        for tag in ("raw", "ema"):
            assert r2["val"][tag]["mAP"] == pytest.approx(r1["val"][tag]["mAP"], abs=1e-4)
    epoch_log = [json.loads(line) for line in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    assert next(r for r in epoch_log if r["event"] == "start")["world_size"] == 2


# ----------------------------------------------------------------------------- no processes needed
def union_of(samplers) -> list[list[int]]:
    """Step by step, the ranks' batches concatenated in rank order."""
    return [list(itertools.chain.from_iterable(parts)) for parts in zip(*(list(s) for s in samplers))]


@pytest.mark.parametrize("world", [1, 2, 4])
def test_sharded_batches_do_not_depend_on_the_number_of_processes(world):
    n, global_batch = 19, 8
    one = list(ShardedBatchSampler(n, global_batch, seed=3))
    ranks = [ShardedBatchSampler(n, global_batch // world, rank=r, world_size=world, seed=3) for r in range(world)]
    for s in ranks:
        assert len(s) == len(one) == 2  # drop-last
    assert union_of(ranks) == one
    seen = [i for batch in one for i in batch]
    assert len(set(seen)) == len(seen) == 16
    for s in ranks:
        s.set_epoch(1)
    assert union_of(ranks) != one  # a new order each epoch
    with pytest.raises(ValueError, match="fewer than one global batch"):
        ShardedBatchSampler(5, 4, world_size=2)


def test_shards_cover_every_sample_once_and_gather_restores_the_order():
    n, world = 7, 3
    shards = [list(ShardSampler(n, r, world)) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(n))
    assert [len(ShardSampler(n, r, world)) for r in range(world)] == [3, 2, 2]
    rows = torch.arange(n * 2.0).view(n, 2)
    assert torch.equal(gather_strided(rows, n), rows)  # one process: identity (and a row-count check)
    with pytest.raises(RuntimeError, match="expected 7"):
        gather_strided(rows[:5], n)
