"""The prepared GPU training check runs (on CPU here) and refuses clearly when asked for CUDA without one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = str(Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_train_tiny.py")


@pytest.mark.slow
def test_dry_run_on_cpu_writes_results(tmp_path):
    out = tmp_path / "r.json"
    run = subprocess.run(
        [
            sys.executable,
            SCRIPT,
            "--device",
            "cpu",
            "--amp",
            "none",
            "--steps",
            "10",
            "--batch-size",
            "8",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["losses_finite"] and result["steps"] >= 10


@pytest.mark.slow
def test_cuda_request_without_gpu_is_refused():
    # No device is visible to the script, on a GPU machine too: the refusal is checked everywhere.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run([sys.executable, SCRIPT], capture_output=True, text=True, timeout=120, env=env)
    assert run.returncode == 2 and "no CUDA device" in run.stderr
