"""The `sadcl` command end to end: list, info, predict, and clear failures on bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import sadcl
from sadcl.cli import main
from sadcl.zoo.loading import checkpoint_metadata, export_state_dict
from sadcl.zoo.safetensors_io import save_safetensors


def run_cli(*args):
    """The installed console script, as a user runs it."""
    return subprocess.run(["sadcl", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_list_and_info(capsys):
    out = run_cli("list")
    assert out.returncode == 0, out.stderr
    assert "sadcl_coco_448" in out.stdout and "none published" in out.stdout
    assert main(["list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} == set(sadcl.list_models())
    assert main(["info", "sadcl_coco_448"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["label_names"][0] == "person" and info["metrics"]["mAP"] == 85.6


@pytest.fixture
def tiny_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = sadcl.create_model("sadcl_tiny").eval()
    path = tmp_path / "tiny.safetensors"
    save_safetensors(export_state_dict(model), path, checkpoint_metadata(model))
    return model, path


@pytest.fixture
def image_dir(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(d / f"im{i}.png")
    return d


@pytest.mark.slow
def test_predict_json_matches_library(tiny_checkpoint, image_dir):
    model, ckpt = tiny_checkpoint
    out = run_cli(
        "predict", "--model", "sadcl_tiny", "--checkpoint", str(ckpt), "--top-k", "2", "--json", str(image_dir)
    )
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert len(res) == 3
    first = sorted(res)[0]
    expected = sadcl.predict(model, first, top_k=2)[0]
    assert list(res[first]) == list(expected)
    assert res[first] == pytest.approx(expected, abs=1e-5)


def test_predict_text_with_threshold_and_progress(tiny_checkpoint, image_dir, capsys, monkeypatch):
    _, ckpt = tiny_checkpoint
    files = [str(p) for p in sorted(image_dir.iterdir())]
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # the bar is for a terminal
    assert (
        main(
            [
                "predict",
                "--model",
                "sadcl_tiny",
                "--checkpoint",
                str(ckpt),
                "--threshold",
                "0.99",
                "--batch-size",
                "1",
                *files,
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 3 and "(no label above threshold)" in captured.out
    assert "predict" in captured.err and "image/s" in captured.err  # the progress bar, on a terminal


@pytest.mark.parametrize(
    "args,needle",
    [
        (["predict", "--model", "sadcl_tiny", "--checkpoint", "CKPT", "nope.png"], "nope.png"),
        (["predict", "--model", "sadcl_nope", "x.png"], "Unknown SADCL model"),
        (["predict", "--model", "sadcl_coco_448", "x.png"], "No checkpoint has been published"),
        (["info", "sadcl_cocoo_448"], "Did you mean"),
    ],
)
def test_bad_input_exits_non_zero_with_a_clear_message(args, needle, tiny_checkpoint, capsys):
    _, ckpt = tiny_checkpoint
    assert main([str(ckpt) if a == "CKPT" else a for a in args]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.startswith(f"sadcl {args[0]}: error:")


@pytest.mark.slow
def test_corrupt_image_is_named_by_the_console_script(tiny_checkpoint, tmp_path):
    _, ckpt = tiny_checkpoint
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 not really")
    out = run_cli("predict", "--model", "sadcl_tiny", "--checkpoint", str(ckpt), str(bad))
    assert out.returncode == 2 and "broken.jpg" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "sadcl.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and sadcl.__version__ in out.stdout
