"""ONNX export: onnxruntime reproduces PyTorch's logits, with a dynamic batch dimension, at 64 and 448 px."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import sadcl
from sadcl.cli import main
from sadcl.zoo.export import export_onnx
from sadcl.zoo.loading import checkpoint_metadata, export_state_dict
from sadcl.zoo.safetensors_io import save_safetensors
from sadcl.zoo.weights import sha256_file

# The `onnx` extra (pip install 'sadcl[onnx]'): without it this module is skipped, the rest of the suite runs.
onnx = pytest.importorskip("onnx", reason="needs the onnx extra: pip install 'sadcl[onnx]'")
ort = pytest.importorskip("onnxruntime", reason="needs the onnx extra: pip install 'sadcl[onnx]'")


def run_both(model: sadcl.SADCL, path, batch: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
    (got,) = session.run(["logits"], {"images": x.numpy()})
    with torch.no_grad():
        return got, model(x).numpy()


@pytest.mark.slow
def test_onnx_matches_pytorch_with_a_dynamic_batch(tmp_path):
    """Through `sadcl export CHECKPOINT DIR --onnx`, from a fine-tuned checkpoint that carries its config."""
    torch.manual_seed(0)
    model = sadcl.create_model("sadcl_tiny").eval()
    checkpoint = tmp_path / "fine-tuned.safetensors"
    save_safetensors(export_state_dict(model), checkpoint, checkpoint_metadata(model))
    assert main(["export", str(checkpoint), str(tmp_path / "export"), "--onnx"]) == 0
    config = json.loads((tmp_path / "export" / "config.json").read_text())["sadcl"]
    path = tmp_path / "export" / "model.onnx"
    assert config["files"]["model.onnx"]["sha256"] == sha256_file(path)
    assert config["onnx"]["filename"] == "model.onnx" and config["onnx"]["sha256"] == sha256_file(path)
    assert config["onnx"]["input_size"] == [3, 64, 64]
    assert "onnxruntime" in (tmp_path / "export" / "README.md").read_text()

    for batch in (1, 3):
        got, want = run_both(model, path, batch, 64)
        assert got.shape == (batch, 20)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)

    proto = onnx.load(str(path))
    (images,), (logits,) = proto.graph.input, proto.graph.output
    assert [d.dim_param or d.dim_value for d in images.type.tensor_type.shape.dim] == ["batch", 3, 64, 64]
    assert [d.dim_param or d.dim_value for d in logits.type.tensor_type.shape.dim] == ["batch", 20]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["label_names"]) == model.label_names
    assert json.loads(meta["mean"]) == [0.485, 0.456, 0.406] and json.loads(meta["input_size"]) == [3, 64, 64]
    assert proto.opset_import[0].version == 17


@pytest.mark.slow
def test_onnx_at_448(tmp_path):
    torch.manual_seed(0)
    model = sadcl.create_model("sadcl_tiny", hidden_dim=32, ffn_dim=64, proj_dim=16, img_size=448).train()
    path = export_onnx(model, tmp_path / "sadcl_448.onnx")  # exported in eval mode whatever the caller's
    assert model.training
    model.eval()
    got, want = run_both(model, path, 2, 448)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with pytest.raises(Exception, match="images"):  # the image size is fixed: a clear error, not garbage
        session.run(["logits"], {"images": np.zeros((1, 3, 224, 224), np.float32)})
