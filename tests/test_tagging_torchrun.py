"""`torchrun -m sadcl.cli predict --output F`: the processes split the images and F is the file one process
writes, byte for byte (each batch is scored whole by one process, so the arithmetic is the same); a failure on
any process stops all of them at the same round, and rank 0 reports it."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import sadcl
from sadcl.cli import main
from sadcl.tagging import shard
from sadcl.zoo.loading import checkpoint_metadata, export_state_dict
from sadcl.zoo.safetensors_io import save_safetensors


@pytest.mark.slow
def test_two_processes_resume_a_torn_file_into_the_one_process_file(tmp_path):
    torch.manual_seed(0)
    model = sadcl.create_model("sadcl_tiny")
    ckpt = tmp_path / "tiny.safetensors"
    save_safetensors(export_state_dict(model), ckpt, checkpoint_metadata(model))
    images = tmp_path / "imgs"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(11):
        Image.fromarray(rng.integers(0, 255, (30 + i, 40, 3), dtype=np.uint8)).save(images / f"i{i:02d}.png")
    args = ["predict", "--checkpoint", str(ckpt), "--batch-size", "2", "--workers", "0"]
    one, two = tmp_path / "one.csv", tmp_path / "two.csv"
    assert main([*args, str(images), "--output", str(one)]) == 0
    data = one.read_bytes()
    # Two batches done, the fifth record torn: the two processes cut it and deal the 7 images left (batches
    # 4-5 and 8-9 to rank 0, 6-7 and 10 to rank 1), in rounds gathered to rank 0.
    fifth = data.index(b"\r\n", data.index(b"i03.png")) + 2
    two.write_bytes(data[: fifth + 20])
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "sadcl.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    # The images named by a list file this time (each process reads it): the same names, the same file.
    (tmp_path / "list.txt").write_text("".join(f"{images / f'i{i:02d}.png'}\n" for i in range(11)))
    args += ["--files-from", str(tmp_path / "list.txt")]
    out = subprocess.run(
        [*run, *args, "--output", str(two), "--resume"], capture_output=True, text=True, timeout=300, env=env
    )
    assert out.returncode == 0, out.stderr
    assert two.read_bytes() == data
    assert out.stdout == f"{two}: 11 images (7 new)\n"  # rank 0 alone reports
    assert "cut a torn last record" in out.stderr and "Traceback" not in out.stderr


def _fake_gather(monkeypatch, others):
    """``shard._gather`` as if the other ranks had sent ``others`` (this rank's payload goes at its rank)."""

    def gather(group, obj):
        parts = list(others)
        parts.insert(group.rank, obj)
        return parts

    monkeypatch.setattr(shard, "_gather", gather)


def test_a_peer_failure_stops_every_rank_and_rank_0_reports_it(monkeypatch):
    main_rank, other_rank = shard.Group(rank=0, world=2), shard.Group(rank=1, world=2)
    _fake_gather(monkeypatch, [("cannot load image x.png: truncated", [])])
    with pytest.raises(RuntimeError, match=r"^process 1 of 2: cannot load image x.png: truncated$"):
        list(shard.rounds(iter([[1, 2]]), 2, main_rank))

    def failing():
        raise OSError("disk on fire")
        yield

    _fake_gather(monkeypatch, [(None, [1, 2])])
    with pytest.raises(OSError, match="disk on fire"):  # rank 0's own error, as one process would raise it
        list(shard.rounds(failing(), 2, main_rank))
    with pytest.raises(shard.PeerFailed):  # the other ranks stop quietly
        list(shard.rounds(failing(), 2, other_rank))
    _fake_gather(monkeypatch, ["boom"])
    with pytest.raises(shard.PeerFailed):
        shard.settle(other_rank, None)
    _fake_gather(monkeypatch, [(None, [3, 4]), (None, [5])])  # rounds: rank order, then the input ran out
    got = list(shard.rounds(iter([[1, 2]]), 2, shard.Group(rank=0, world=3)))
    assert got == [[1, 2, 3, 4, 5]]


def test_when_rank_0_stops_writing_the_others_learn_it_in_the_round_they_wait_in(monkeypatch):
    sent = []

    def gather(group, obj):
        sent.append(obj)
        return [obj, (None, [3, 4])]

    monkeypatch.setattr(shard, "_gather", gather)
    rounds = shard.rounds(iter([[1, 2], [5, 6]]), 2, shard.Group(rank=0, world=2))
    assert next(rounds) == [1, 2, 3, 4]
    rounds.close()  # the writer failed (a full disk) or was interrupted
    assert sent == [(None, [1, 2]), ("process 0 stopped writing", [])]
    _fake_gather(monkeypatch, [("process 0 stopped writing", [])])
    with pytest.raises(shard.PeerFailed):
        list(shard.rounds(iter([[1, 2]]), 2, shard.Group(rank=1, world=2)))


def test_under_torchrun_the_processes_of_a_node_share_the_default_workers(monkeypatch):
    from sadcl.data import stream
    from sadcl.tagging.job import JobOptions, _workers

    monkeypatch.setattr(stream, "default_workers", lambda device: {"cpu": 4, "cuda:1": 15}[device])
    four = shard.Group(rank=1, world=8, local_rank=1, local_world=4)
    assert _workers(JobOptions(images=[]), four, None) == 1
    assert _workers(JobOptions(images=[]), four, "cuda:1") == 3
    assert _workers(JobOptions(images=[], workers=6), four, None) == 6  # --workers as given
    assert _workers(JobOptions(images=[]), shard.Group(), None) is None  # one process: iter_predict's default
    monkeypatch.setattr(stream, "default_workers", lambda device: 0)  # the model's threads take every core
    assert _workers(JobOptions(images=[]), four, None) is None  # not a forced worker: iter_predict adapts


def test_leave_waits_for_peers_only_after_a_finished_job_and_never_unbounded(monkeypatch):
    import torch.distributed as dist

    calls = []

    def barrier(timeout):
        calls.append(("barrier", timeout.total_seconds()))
        raise RuntimeError("rank 1 failed to pass monitoredBarrier")  # a peer that stopped after the last round

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "monitored_barrier", barrier)
    monkeypatch.setattr(dist, "destroy_process_group", lambda: calls.append(("destroy",)))
    owned = shard.Group(rank=0, world=2, owns=True)
    shard.leave(owned, finished=True)  # the peer's failure does not become this rank's
    assert calls == [("barrier", shard.LEAVE_BARRIER_S), ("destroy",)]
    calls.clear()
    shard.leave(owned)  # after a failure: no barrier (a peer may be gone)
    assert calls == [("destroy",)]
    shard.leave(shard.Group(rank=1, world=2), finished=True)  # a group it did not create is left alone
    assert calls == [("destroy",)]
