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


def assert_timing(t: dict, n: int) -> None:
    """A timing summary of n samples: positive, ordered (min <= median <= max)."""
    assert t["n"] == n and 0 < t["min_s"] <= t["median_s"] <= t["max_s"], t


def assert_ratio(value: float, numerator: float, denominator: float) -> None:
    """A derived figure (speedup, rate) is the ratio it claims to be."""
    assert value > 0 and value == pytest.approx(numerator / denominator, rel=1e-9)


@pytest.mark.slow
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
        assert_timing(r["time_ours"], 2)
        ours_mib = r["memory_ours"]["extra_peak_mib"]
        assert ours_mib >= 0
        if config == "coco":
            assert (
                r["agreement"]["value_rel_diff"] < 1e-4 and r["agreement"]["grad_max_abs_diff_rel_to_max_grad"] < 1e-4
            )
            assert_timing(r["time_dense"], 2)
            assert_ratio(r["speedup"], r["time_dense"]["median_s"], r["time_ours"]["median_s"])
            assert r["memory_ratio"] == pytest.approx(r["memory_dense"]["extra_peak_mib"] / max(ours_mib, 1e-9))
            assert ("targets" in r) == loss.startswith("sample")
            if "targets" in r:
                t = r["targets"]
                assert t["met"] == (r["speedup"] >= t["speedup_min"] and r["memory_ratio"] >= t["memory_ratio_min"])
        else:
            assert "time_dense" not in r
            assert r["targets"]["met"] == (ours_mib <= r["targets"]["extra_peak_mib_max"])
    assert data["inputs"]["coco"]["positive_embeddings_K"] > 0


@pytest.mark.slow
def test_bench_memory_bank(tmp_path, one_thread):
    data = run("bench_memory_bank", tmp_path, *one_thread)
    (row,) = data["results"]
    assert row["config"] == "coco" and 0 < row["rows_written"] <= row["positive_labels"]
    for k in ("ours", "loop", "where"):
        t = row[f"time_{k}"]
        assert 0 < t["min_s"] <= t["median_s"] <= t["max_s"] and t["updates_per_timed_call"] >= 1
    assert_ratio(row["speedup_vs_loop"], row["time_loop"]["median_s"], row["time_ours"]["median_s"])
    assert_ratio(row["speedup_vs_where"], row["time_where"]["median_s"], row["time_ours"]["median_s"])
    assert row["target"]["met"] == (row["speedup_vs_loop"] >= row["target"]["speedup_vs_loop_min"])


@pytest.mark.slow
def test_bench_inference(tmp_path, one_thread):
    data = run("bench_inference", tmp_path, *one_thread)
    assert data["model"] == "sadcl_tiny" and [r["batch"] for r in data["results"]] == [1, 2]
    for r in data["results"]:
        assert r["flops_per_forward"]["total"] > 0 and r["matmul_gflops"]["median_s"] > 0
        assert {"eager_nchw", "predict", "eager_channels_last"} <= set(r["contenders"])
        assert r["notes"]["predict_max_abs_diff_vs_eager_nchw"] < 1e-4
        base = r["contenders"]["eager_nchw"]["time"]["median_s"]
        for c in r["contenders"].values():
            t = c["time"]
            assert 0 < t["min_s"] <= t["median_s"] <= t["max_s"] and c["share_of_matmul_rate"] > 0
            assert_ratio(c["seconds_per_image"], t["median_s"], r["batch"])
            assert_ratio(c["speedup_vs_eager_nchw"], base, t["median_s"])
    last = data["results"][-1]
    target = last["target"]
    assert target["met"] == (last["contenders"]["predict"]["share_of_matmul_rate"] >= target["predict_share_min"])
    assert data["small_model"]["images_per_s"] > 0


@pytest.mark.slow
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


@pytest.mark.slow
def test_bench_train_gpu_on_cpu(tmp_path, one_thread):
    data = run("bench_train_gpu", tmp_path, "--device", "cpu", *one_thread)
    assert data["device"] == "cpu" and data["device_name"]
    ours, authors = data["configs"]["ours"], data["configs"]["authors"]
    for c in (ours, authors):
        assert_timing(c["time"], 2)
    assert_ratio(data["speedup"], ours["images_per_s"], authors["images_per_s"])
    bank = data["memory_bank_update"]
    assert_ratio(bank["speedup_vs_loop"], bank["time_loop"]["median_s"], bank["time_ours"]["median_s"])


def test_bench_train_gpu_without_cuda_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="no CUDA device is available.*--device cpu --quick"):
        bench("bench_train_gpu").main(["--out", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()


@pytest.mark.slow
def test_gpu_tagging_on_cpu(tmp_path, one_thread):
    """The GPU run's mechanics on a CPU: JPEGs, the synthetic reference, sadcl train from the folder (its log's
    rate), the stop at the goal, and iter_predict from files against tensors on the device."""
    data = run("gpu_tagging", tmp_path, "--device", "cpu", *one_thread)
    assert data["device"] == "cpu" and data["images"]["n"] == 12
    ref = data["reference"]["images_per_s"]
    assert ref > 0 and "bench_train_gpu.py --device cpu" in data["reference"]["command"]
    tried = [r["workers"] for r in data["train"]]
    assert tried in ([0], [0, 1])
    for r in data["train"]:
        assert r["images_per_s"] > 0 and r["windows"] >= 1
        assert_ratio(r["ratio_to_reference"], r["images_per_s"], ref)
    goal = data["goal"]
    assert goal["met"] == (data["train"][-1]["ratio_to_reference"] >= 0.90)
    assert goal["workers"] == (tried[-1] if goal["met"] else None) and (goal["met"] or tried == [0, 1])
    pred = data["predict"]
    assert pred["device"] == "cpu" and pred["files_vs_tensor_max_abs_diff"] < 1e-4
    assert set(pred["contenders"]) == {"tensor", "files_default", "files_decoded"}


def test_gpu_tagging_without_cuda_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="no CUDA device is available.*--device cpu --quick"):
        bench("gpu_tagging").main(["--out", str(tmp_path / "x.json")])
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


def test_bench_input_pipeline(tmp_path, one_thread):
    import math

    data = run("bench_input_pipeline", tmp_path, *one_thread)
    images = data["images"]
    assert (
        images["n"] == 4 and sum(images["sizes"].values()) == 4 and 0 < images["min_file_kb"] <= images["max_file_kb"]
    )
    assert data["identical_to_torchvision_tail"] is True and data["previous_estimate"]["images_per_s_per_core"] == 210
    assert set(data["pipelines"]) == {"baseline", "sadcl", "eval"}
    for p in data["pipelines"].values():
        chunks = p["after"]["cpu_s_per_chunk"]  # 2 chunks (batch 2) x 2 rounds
        assert [len(c) for c in chunks] == [2, 2] and [len(c) for c in p["before"]["wall_s_per_chunk"]] == [2, 2]
        assert p["images_per_s_per_core"] == pytest.approx(4 / sum(min(c) for c in chunks), rel=1e-3)  # rounded
        assert p["cores_needed"] == {t: math.ceil(int(t) / p["images_per_s_per_core"]) for t in ("550", "700")}
        assert p["speedup_cpu"] > 0 and p["speedup_wall"] > 0
        b = p["breakdown"]
        assert sum(b["by_kind_share"].values()) == pytest.approx(1.0) and b["by_kind_ms"]["decode"] > 0
    assert "MultiScaleCrop" in data["pipelines"]["sadcl"]["breakdown"]["ms_per_image"]
    for recipe in ("sadcl", "baseline"):
        loader = data["dataloader"][recipe]
        assert [loader[f"workers_{k}"]["images_per_epoch"] for k in (1, 2)] == [4, 4]
    assert data["collate"]["batch"] == 2 and data["collate"]["ms_per_image"] > 0


def test_bench_input_pipeline_keeps_an_existing_image_dir(tmp_path):
    (tmp_path / "mine").mkdir()
    out = tmp_path / "x.json"
    with pytest.raises(SystemExit, match="--image-dir .*mine exists; name a new folder"):
        bench("bench_input_pipeline").main(["--quick", "--image-dir", str(tmp_path / "mine"), "--out", str(out)])
    assert not out.exists() and not list((tmp_path / "mine").iterdir())


@pytest.mark.slow
def test_bench_predict_folder(tmp_path, one_thread):
    data = run("bench_predict_folder", tmp_path, "--no-cli", *one_thread)
    assert [(f["min_side"], f["max_side"], f["images"]) for f in data["folders"]] == [(56, 400, 24)]
    models = [(r["model"], tuple(r["sides"])) for r in data["results"]]
    assert models == [("sadcl_fashion_mosaic", (56, 400)), ("sadcl_tiny", (56, 400))]
    for r in data["results"]:
        assert r["files_vs_tensor_max_abs_diff"] < 1e-4 and r["decode_cpu_ms_per_image"] > 0
        assert set(r["contenders"]) == {"tensor", "files_default", "files_w0", "files_decoded"}
        base = r["contenders"]["tensor"]["time"]
        for name, c in r["contenders"].items():
            assert_timing(c["time"], 1)
            assert_ratio(c["images_per_s"], r["images"], c["time"]["median_s"])
            if name != "tensor":
                assert_ratio(c["ratio_to_tensor"], base["median_s"], c["time"]["median_s"])
    target = data["results"][0]["target"]
    assert target["met"] == (data["results"][0]["contenders"]["files_default"]["ratio_to_tensor"] >= 0.90)
    rss = data["rss"]
    assert rss["images"] == 72 and set(rss["main_vmhwm_mb_at"]) == {"24", "72"}
    assert (rss["worker_vmhwm_mb_max"] > 0) == (rss["workers_seen"] > 0)
    assert rss["growth_mb"] == pytest.approx(rss["main_vmhwm_mb_at"]["72"] - rss["main_vmhwm_mb_at"]["24"])
    assert rss["target"]["met"] == (rss["growth_mb"] < 50)
