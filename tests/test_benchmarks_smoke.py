"""Every benchmark script runs in its ``--quick`` mode and writes a well-formed results file (never timed).

The scripts are run in-process through their ``main(argv)`` (importing torch and sadcl once for all), with
one intra-op thread so that a busy machine does not slow them down; the thread count is restored after.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def bench(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))  # the scripts import their helpers (_common, dense_reference) by name
    return importlib.import_module(name)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    yield ["--threads", "1"]
    torch.set_num_threads(threads)


def run(name: str, tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / "results" / f"{name}.json"
    returned = bench(name).main(["--quick", "--out", str(out), *extra])
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(returned, default=str))  # the file holds what main returned
    assert not [p for p in out.parent.iterdir() if p.name != out.name]  # atomic write: no temporary left
    assert data["quick"] is True and data["benchmark"] == name
    assert data["command"].startswith(f"python benchmarks/{name}.py --quick --out ")
    machine = data["machine"]
    assert machine["torch"] == torch.__version__ and machine["logical_cores"] >= 1 and machine["cpu"]
    assert machine["torch_threads"] == torch.get_num_threads()
    return data


def test_bench_losses(tmp_path, one_thread):
    data = run("bench_losses", tmp_path, *one_thread)
    check = data["memory_method_check"]  # a child that allocates 8 MiB must measure about 8 MiB
    assert check["allocated_mib"] == 8
    if check["method"] == "VmHWM after clear_refs":
        assert 7.5 <= check["measured_extra_peak_mib"] <= 9.0
    rows = {(r["config"], r["loss"]): r for r in data["results"]}
    assert set(rows) == {
        (c, loss) for c in ("coco", "vg500") for loss in ("sample_fixed", "sample_official", "prototype")
    }
    for (config, loss), r in rows.items():
        assert r["time_ours"]["median_s"] > 0 and r["time_ours"]["n"] == 2
        assert r["memory_ours"]["extra_peak_mib"] >= 0
        if config == "coco":
            assert (
                r["agreement"]["value_rel_diff"] < 1e-4 and r["agreement"]["grad_max_abs_diff_rel_to_max_grad"] < 1e-4
            )
            assert r["speedup"] > 0 and "memory_dense" in r
            assert ("targets" in r) == loss.startswith("sample")
        else:
            assert "time_dense" not in r and isinstance(r["targets"]["met"], bool)
    assert data["inputs"]["coco"]["positive_embeddings_K"] > 0


def test_bench_memory_bank(tmp_path, one_thread):
    data = run("bench_memory_bank", tmp_path, *one_thread)
    (row,) = data["results"]
    assert row["config"] == "coco" and row["rows_written"] > 0
    for k in ("ours", "loop", "where"):
        assert row[f"time_{k}"]["median_s"] > 0 and row[f"time_{k}"]["updates_per_timed_call"] >= 1
    assert row["speedup_vs_loop"] > 0 and isinstance(row["target"]["met"], bool)


def test_bench_inference(tmp_path, one_thread):
    data = run("bench_inference", tmp_path, *one_thread)
    assert data["model"] == "sadcl_tiny" and [r["batch"] for r in data["results"]] == [1, 2]
    for r in data["results"]:
        assert r["flops_per_forward"]["total"] > 0 and r["matmul_gflops"]["median_s"] > 0
        assert {"eager_nchw", "predict", "eager_channels_last"} <= set(r["contenders"])
        assert r["notes"]["predict_max_abs_diff_vs_eager_nchw"] < 1e-4
        for c in r["contenders"].values():
            assert c["share_of_matmul_rate"] > 0 and c["seconds_per_image"] > 0
    assert isinstance(data["results"][-1]["target"]["met"], bool)
    assert data["small_model"]["images_per_s"] > 0


def test_bench_cold_start(tmp_path, one_thread):
    data = run("bench_cold_start", tmp_path, *one_thread)
    bench_module = bench("bench_cold_start")
    (name,) = data["results"]
    assert name == bench_module.small_model_name()
    res = data["results"][name]
    for mode in ("download", "first_verification", "remembered_verification"):
        assert res[mode]["n"] == 1
        for phase in bench_module.PHASES:
            assert res[mode][phase] >= 0, (mode, phase)
    assert 0 <= res["sha256_share_of_create_first"] <= 1 and data["hub_requests_total"] > 0


def test_bench_train_gpu_on_cpu(tmp_path, one_thread):
    data = run("bench_train_gpu", tmp_path, "--device", "cpu", *one_thread)
    assert data["device"] == "cpu" and data["device_name"]
    for name in ("ours", "authors"):
        assert data["configs"][name]["images_per_s"] > 0 and data["configs"][name]["time"]["n"] == 2
    assert data["speedup"] > 0 and data["memory_bank_update"]["speedup_vs_loop"] > 0


def test_bench_train_gpu_without_cuda_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="no CUDA device is available.*--device cpu --quick"):
        bench("bench_train_gpu").main(["--out", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()


def test_alternate_rotates_and_summarises():
    common = bench("_common")
    calls = []
    times = common.alternate({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3, warmup=1)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then the order rotates per round
    assert [len(v) for v in times.values()] == [3, 3]
    s = common.summary([3.0, 1.0, 2.0])
    assert (s["median_s"], s["min_s"], s["max_s"], s["n"]) == (2.0, 1.0, 3.0, 3)


def test_memory_bank_accelerator_branch_matches_the_loop():
    """MemoryBank.update has two branches (row gather on the CPU, one torch.where elsewhere, chosen for
    bench_memory_bank.py); a non-contiguous bank takes the torch.where branch on the CPU too."""
    from sadcl.train.memory import MemoryBank

    reference = bench("dense_reference")
    step = bench("bench_memory_bank").make_step(B=3, C=5, D=4, positives_per_image=2.0)
    e, y, x = step["embeddings"], step["targets"], step["logits"]
    fast, other = MemoryBank(4, 5, 4), MemoryBank(4, 5, 4)
    other.bank = torch.zeros(4, 4, 5).transpose(1, 2)  # same shape, not contiguous
    assert not other.bank.is_contiguous()
    loop = torch.zeros(4, 5, 4)
    fast.update(e, y, x)
    other.update(e, y, x)
    reference.loop_memory_update(loop, e, y, x)
    assert torch.equal(fast.bank, loop) and torch.equal(other.bank, loop) and loop.abs().sum() > 0
