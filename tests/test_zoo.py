"""Variants, timm registration, weights.json, strict loading and verified Hub downloads through create_model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import timm
import torch

import sadcl
from sadcl.zoo import VARIANTS, pretrained_cfg_for, read_labels
from sadcl.zoo.loading import HeadChangeWarning, checkpoint_metadata, export_state_dict
from sadcl.zoo.safetensors_io import save_safetensors
from sadcl.zoo.weights import ChecksumError, NoPretrainedWeightsError, WeightsDownloadError, load_weights_table

SMALL = dict(backbone="test_resnet", hidden_dim=32, ffn_dim=32, proj_dim=16, img_size=64)
REPO = "sadcl-test/sadcl_tiny"


def test_label_sets():
    coco, voc, nus, vg = (read_labels(n) for n in ("coco80", "voc20", "nuswide81", "vg500"))
    assert (len(coco), coco[0], coco[-1], coco[9]) == (80, "person", "toothbrush", "traffic light")
    assert (len(voc), voc[0], voc[-1]) == (20, "aeroplane", "tvmonitor")
    assert (len(nus), nus[0], nus[-1]) == (81, "airport", "zebra")
    assert list(nus) == sorted(nus)  # Concepts81 order is alphabetical
    assert vg == tuple(str(i) for i in range(500))


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_every_variant_builds_with_its_label_set(name):
    model = sadcl.create_model(name, **SMALL).eval()
    labels = list(read_labels(VARIANTS[name].labels))
    assert model.label_names == labels
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, len(labels))
    cfg = model.pretrained_cfg
    assert cfg["label_names"] == labels and cfg["input_size"] == (3, 64, 64)
    assert cfg["mean"] == VARIANTS[name].mean and cfg["interpolation"] == "bilinear"
    assert cfg["mean"] == ((0.5,) * 3 if name == "sadcl_fashion_mosaic" else (0.485, 0.456, 0.406))
    assert cfg["num_params"] == sum(p.numel() for p in model.parameters())
    assert "has_weights" in cfg and "metrics_source" in cfg


def test_recorded_parameter_counts_match_full_architectures():
    with torch.device("meta"):  # builds the full ResNet-101 models without allocating them
        for name, cfg in VARIANTS.items():
            model = sadcl.create_model(name)
            assert sum(p.numel() for p in model.parameters()) == cfg.num_params, name
            assert model.pretrained_cfg["input_size"] == (3, cfg.img_size, cfg.img_size)


def test_paper_metadata():
    cfg = pretrained_cfg_for("sadcl_coco_448")
    assert cfg["metrics"]["mAP"] == 85.6 and cfg["metrics"]["OF1"] == 82.1 and "poster" in cfg["metrics_source"]
    assert pretrained_cfg_for("sadcl_coco_576")["input_size"] == (3, 576, 576)
    assert pretrained_cfg_for("sadcl_voc2012_448")["metrics"] is None  # never invented


def test_timm_registration():
    assert set(sadcl.list_models()) <= set(timm.list_models("sadcl_*"))
    model = timm.create_model("sadcl_voc2007_448", **SMALL)
    assert isinstance(model, sadcl.SADCL) and model.num_classes == 20


def test_weights_table_is_the_single_source_of_truth():
    table = load_weights_table()
    assert set(table) == set(VARIANTS), "every variant has an entry (null when unpublished), and only variants"
    assert set(sadcl.list_pretrained()) == {n for n, r in table.items() if r is not None}
    for name in (
        "sadcl_coco_448",
        "sadcl_coco_576",
        "sadcl_voc2007_448",
        "sadcl_voc2012_448",
        "sadcl_nuswide_448",
        "sadcl_vg500_576",
    ):
        assert table[name] is None  # the authors released no checkpoint


def test_unknown_names_and_keywords():
    with pytest.raises(ValueError, match="sadcl_coco_448"):
        sadcl.create_model("sadcl_coco448")
    with pytest.raises(TypeError, match="hidden_size"):
        sadcl.create_model("sadcl_tiny", hidden_size=3)


def test_pretrained_without_published_weights_is_a_clear_error():
    with pytest.raises(NoPretrainedWeightsError) as e:
        sadcl.create_model("sadcl_coco_448", pretrained=True, **SMALL)
    msg = str(e.value)
    assert "sadcl_coco_448" in msg and "sadcl train" in msg and "convert" in msg


def test_num_classes_override_names_labels_by_index():
    model = sadcl.create_model("sadcl_tiny", num_classes=3)
    assert model.label_names == ["0", "1", "2"]


# -- checkpoints ------------------------------------------------------------------------------------------
def _save_tiny(path, **overrides):
    torch.manual_seed(0)
    model = sadcl.create_model("sadcl_tiny", **overrides).eval()
    sha = save_safetensors(export_state_dict(model), path, checkpoint_metadata(model))
    return model, sha


def test_checkpoint_path_round_trip(tmp_path):
    src, _ = _save_tiny(tmp_path / "m.safetensors")
    model = sadcl.create_model("sadcl_tiny", checkpoint_path=tmp_path / "m.safetensors").eval()
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(model(x), src(x))
    # built on the meta device and assigned: nothing left on meta, trainability as built normally
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    assert [p.requires_grad for p in model.parameters()] == [p.requires_grad for p in src.parameters()]
    assert not next(model.backbone.parameters()).requires_grad  # frozen stem
    half = {k: v.half() if v.is_floating_point() else v for k, v in export_state_dict(src).items()}
    save_safetensors(half, tmp_path / "half.safetensors", checkpoint_metadata(src))
    assert {
        p.dtype for p in sadcl.create_model("sadcl_tiny", checkpoint_path=tmp_path / "half.safetensors").parameters()
    } == {torch.float32}  # a float16 file still gives a float32 model


def test_head_change_reinitialises_only_label_parameters(tmp_path):
    src, _ = _save_tiny(tmp_path / "m.safetensors")
    with pytest.warns(HeadChangeWarning, match="query_embed.weight, fc.W, fc.b, prototypes"):
        model = sadcl.create_model(
            "sadcl_tiny", checkpoint_path=tmp_path / "m.safetensors", label_names=["cat", "dog", "fish"]
        )
    theirs, ours = src.state_dict(), model.state_dict()
    class_dim = {"query_embed.weight": 0, "fc.W": 1, "fc.b": 1, "prototypes": 0}
    for k, v in ours.items():
        if k in class_dim:
            assert v.shape[class_dim[k]] == 3, k
        else:
            assert torch.equal(v, theirs[k]), k
    # Same count but other names is a head change too
    with pytest.warns(HeadChangeWarning):
        sadcl.create_model(
            "sadcl_tiny", checkpoint_path=tmp_path / "m.safetensors", label_names=[f"x{i}" for i in range(20)]
        )


def test_loading_is_strict(tmp_path):
    model = sadcl.create_model("sadcl_tiny")
    state = export_state_dict(model)
    extra = dict(state, memorybank=torch.zeros(2, 20, 64))
    save_safetensors(extra, tmp_path / "extra.safetensors", checkpoint_metadata(model))
    with pytest.raises(RuntimeError, match="unexpected key.*memorybank"):
        sadcl.create_model("sadcl_tiny", checkpoint_path=tmp_path / "extra.safetensors")
    missing = {k: v for k, v in state.items() if k != "transformer.decoder.norm.weight"}
    save_safetensors(missing, tmp_path / "missing.safetensors", checkpoint_metadata(model))
    with pytest.raises(RuntimeError, match="missing key.*transformer.decoder.norm.weight"):
        sadcl.create_model("sadcl_tiny", checkpoint_path=tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="records sadcl_tiny .*hidden_dim 64.*not the architecture"):
        sadcl.create_model("sadcl_tiny", checkpoint_path=tmp_path / "missing.safetensors", hidden_dim=32)
    save_safetensors(state, tmp_path / "bare.safetensors", {"format": "pt"})  # no header: the shapes speak
    with pytest.raises(RuntimeError, match="mis-shaped.*file .* vs model"):
        sadcl.create_model("sadcl_tiny", checkpoint_path=tmp_path / "bare.safetensors", hidden_dim=32)
    (tmp_path / "m.pth").write_bytes(b"not a safetensors file")
    with pytest.raises(Exception, match="safetensors"):
        sadcl.create_model("sadcl_tiny", checkpoint_path=tmp_path / "m.pth")
    (tmp_path / "half.safetensors").write_bytes((tmp_path / "extra.safetensors").read_bytes()[:1000])
    with pytest.raises(Exception, match="half.safetensors"):
        sadcl.create_model("sadcl_tiny", checkpoint_path=tmp_path / "half.safetensors")


# -- through the (loopback) Hub -----------------------------------------------------------------------------
@pytest.fixture
def published_tiny(tmp_path, fake_hub, monkeypatch):
    """sadcl_tiny published on the fake Hub and recorded in a weights table (SADCL_WEIGHTS_JSON)."""
    src, sha = _save_tiny(tmp_path / "model.safetensors")
    data = (tmp_path / "model.safetensors").read_bytes()
    commit = fake_hub.add_file(REPO, "model.safetensors", data)
    record = dict(hf_hub_id=REPO, filename="model.safetensors", revision=commit, sha256=sha, size=len(data), file=None)
    table = tmp_path / "weights.json"
    table.write_text(json.dumps({"schema": 1, "weights": {"sadcl_tiny": record}}))
    monkeypatch.setenv("SADCL_WEIGHTS_JSON", str(table))
    return src, data


def test_pretrained_download_verify_and_cache(published_tiny, fake_hub, hf_cache, hub_offline):
    src, _ = published_tiny
    assert sadcl.list_pretrained() == ["sadcl_tiny"]
    x = torch.randn(1, 3, 64, 64)
    model = sadcl.create_model("sadcl_tiny", pretrained=True).eval()
    assert torch.equal(model(x), src(x))
    assert "GET" in {m for m, _ in fake_hub.requests}
    n = len(fake_hub.requests)
    sadcl.create_model("sadcl_tiny", pretrained=True)  # pinned revision, cached: no request at all
    assert len(fake_hub.requests) == n
    hub_offline(True)
    assert torch.equal(sadcl.create_model("sadcl_tiny", pretrained=True).eval()(x), src(x))


def test_offline_cold_cache_names_repo_file_and_cache(published_tiny, hf_cache, hub_offline):
    hub_offline(True)
    with pytest.raises(WeightsDownloadError) as e:
        sadcl.create_model("sadcl_tiny", pretrained=True)
    assert REPO in str(e.value) and "model.safetensors" in str(e.value) and str(hf_cache) in str(e.value)


def test_corrupted_download_is_never_loaded(published_tiny, fake_hub, hf_cache):
    src, data = published_tiny
    fake_hub.corrupt(REPO, "model.safetensors")
    with pytest.raises(ChecksumError, match="sha256"):
        sadcl.create_model("sadcl_tiny", pretrained=True)
    assert not [p for p in hf_cache.rglob("*") if p.is_file() and p.stat().st_size == len(data)]
    fake_hub.restore(REPO, "model.safetensors", data)
    assert sadcl.create_model("sadcl_tiny", pretrained=True) is not None


def test_cache_dir_is_honoured(published_tiny, tmp_path):
    sadcl.create_model("sadcl_tiny", pretrained=True, cache_dir=tmp_path / "elsewhere")
    assert list((tmp_path / "elsewhere").glob("models--sadcl-test--sadcl_tiny/snapshots/*/model.safetensors"))


@pytest.mark.network
@pytest.mark.slow
def test_hf_endpoint_mirror_in_a_fresh_process(published_tiny, tmp_path):
    """HF_ENDPOINT (a mirror) is read by huggingface_hub at import: check it in a new interpreter."""
    code = (
        "import sadcl, torch; m = sadcl.create_model('sadcl_tiny', pretrained=True); "
        "print(m(torch.zeros(1, 3, 64, 64)).shape)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "torch.Size([1, 20])" in out.stdout
