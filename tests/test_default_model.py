"""The shipped default model `sadcl_fashion_mosaic`: packaged, verified, offline, through the Hub, sensible
predictions."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import needs
import pytest
import torch

import sadcl
from sadcl.zoo.weights import load_weights_table, sha256_file

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "mosaics"
NAME = "sadcl_fashion_mosaic"


def test_recorded_and_packaged_with_its_checksum():
    record = load_weights_table()[NAME]
    assert record is not None and record.file and record.hf_hub_id == "sadcl/sadcl_fashion_mosaic"
    path = record.packaged_path
    assert path.is_file() and path.stat().st_size == record.size <= 20_000_000
    assert sha256_file(path) == record.sha256
    assert NAME in sadcl.list_pretrained()


def test_loads_offline_from_the_package(hub_offline, hf_cache):
    hub_offline(True)
    model = sadcl.create_model(NAME, pretrained=True)
    cfg = model.pretrained_cfg
    assert model.label_names[0] == "T-shirt/top" and model.label_names[-1] == "Ankle boot"
    assert cfg["input_size"] == (3, 56, 56) and cfg["metrics"]["mAP"] >= 93.0
    assert "fashion_model.json" in cfg["metrics_source"]
    assert not list(hf_cache.rglob("*.safetensors"))  # nothing downloaded


def test_loads_through_the_hub(fake_hub, tmp_path, monkeypatch):
    record = load_weights_table()[NAME]
    data = record.packaged_path.read_bytes()
    commit = fake_hub.add_file(record.hf_hub_id, record.filename, data)
    table = {
        "schema": 1,
        "weights": {
            NAME: dict(
                hf_hub_id=record.hf_hub_id,
                filename=record.filename,
                revision=commit,
                sha256=record.sha256,
                size=record.size,
                file=None,
            )
        },
    }
    (tmp_path / "weights.json").write_text(json.dumps(table))
    monkeypatch.setenv("SADCL_WEIGHTS_JSON", str(tmp_path / "weights.json"))
    downloaded = sadcl.create_model(NAME, pretrained=True).eval()
    monkeypatch.delenv("SADCL_WEIGHTS_JSON")
    packaged = sadcl.create_model(NAME, pretrained=True).eval()
    x = torch.randn(2, 3, 56, 56)
    assert torch.equal(downloaded(x), packaged(x))
    assert any(m == "GET" for m, _ in fake_hub.requests)  # downloaded through the Hub, not read from the package


def test_readme_command_predicts_the_example_mosaics(capsys):
    """README's first command: `sadcl predict examples/mosaics/test` with the default model, offline."""
    from sadcl.cli import main

    assert main(["predict", str(EXAMPLES / "test"), "--top-k", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out) == 6 and all(len(r) == 2 for r in out.values())
    assert all(list(r.values()) == sorted(r.values(), reverse=True) for r in out.values())
    with open(EXAMPLES / "test.csv", newline="") as f:
        first = next(csv.DictReader(f))  # a lone bag: an easy case the model must get right
    assert first["labels"] == "Bag" and list(out[str(EXAMPLES / first["image"])])[0] == "Bag"


@needs.fashion_mnist
@pytest.mark.slow
def test_accurate_on_fresh_test_mosaics():
    """Mosaics the model never saw (test split, another seed), through the public predict API."""
    from sadcl.data.mosaic import make_mosaics, mosaic_to_pil
    from sadcl.metrics import mean_average_precision

    images, targets, _ = make_mosaics("test", 400, seed=11)
    model = sadcl.create_model(NAME, pretrained=True)
    results = sadcl.predict(model, [mosaic_to_pil(im) for im in images], batch_size=200)
    scores = [[r[name] for name in model.label_names] for r in results]
    assert mean_average_precision(scores, targets) >= 93.0
