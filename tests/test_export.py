"""Export folders (weights, config.json, model card), loading them back, and publishing through the Hub API."""

from __future__ import annotations

import json
import warnings

import needs
import pytest
import torch
from huggingface_hub import ModelCard, hf_hub_download

import sadcl
from sadcl.zoo.export import export_model
from sadcl.zoo.factory import ModelSourceError, create_model, describe_source
from sadcl.zoo.header import parse_header
from sadcl.zoo.hub import PublishError, push_to_hub
from sadcl.zoo.loading import HeadChangeWarning
from sadcl.zoo.safetensors_io import read_safetensors
from sadcl.zoo.weights import CheckpointFileError, ChecksumError, WeightsDownloadError, WeightsRecord, sha256_file

load_exported = create_model  # an export folder, local-dir: or hf-hub: name is a source like any other

REPO = "sadcl-test/tiny-export"
TOKEN = "hf_test_write_token"
METRICS = {"mAP": 71.25, "CF1": 60.5}


@pytest.fixture(scope="module")
def model() -> sadcl.SADCL:
    torch.manual_seed(0)
    return sadcl.create_model("sadcl_tiny").eval()


@pytest.fixture
def export_dir(tmp_path, model):
    out = tmp_path / "export"
    export_model(
        model, out, metrics=METRICS, recipe={"epochs": 3, "optimizer": "AdamW 5e-5"}, repo_id=REPO, license="apache-2.0"
    )
    return out


def logits(m: sadcl.SADCL, seed: int = 1, batch: int = 2) -> torch.Tensor:
    x = torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return m.eval()(x)


def test_export_writes_weights_config_and_card(export_dir, model):
    assert sorted(p.name for p in export_dir.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((export_dir / "config.json").read_text())
    info = config["sadcl"]
    weights = export_dir / "model.safetensors"
    assert info["weights"] == {
        "filename": "model.safetensors",
        "sha256": sha256_file(weights),
        "size": weights.stat().st_size,
    }
    assert info["files"]["README.md"]["sha256"] == sha256_file(export_dir / "README.md")
    # timm's layout: architecture (a registered entry point), model_args, pretrained_cfg with timm's keys
    assert config["architecture"] == "sadcl_tiny" and config["model_args"] == model.config
    assert info["variant"] == "sadcl_tiny" and info["format_version"] == 2
    assert config["label_names"][0] == "aeroplane" and config["num_classes"] == 20
    pre = config["pretrained_cfg"]
    assert {k: pre[k] for k in ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode")} == {
        "input_size": [3, 64, 64],
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "crop_mode": "squash",
    }
    assert pre["license"] == "apache-2.0"
    assert info["metrics"] == METRICS and info["metrics_source"] == "measured on these weights"
    header = parse_header(read_safetensors(weights)[1], str(weights))
    assert header.config == model.config and header.variant == "sadcl_tiny"

    card = ModelCard.load(export_dir / "README.md")
    assert card.data.library_name == "sadcl" and card.data.pipeline_tag == "image-classification"
    assert card.data.license == "apache-2.0" and "multi-label-image-classification" in card.data.tags
    results = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert results == METRICS and card.data.eval_results[0].dataset_name == "none (tests and demos)"
    assert card.data.to_dict()["metrics_source"] == "measured on these weights"
    assert card.data.to_dict()["label_names"] == model.label_names
    for section in ("## Usage", "## Results", "## Labels", "## Training recipe", "## Citation"):
        assert section in card.text
    assert f'sadcl.create_model("hf-hub:{REPO}")' in card.text and "19\ttvmonitor" in card.text
    assert f'timm.create_model("hf-hub:{REPO}", pretrained=True)' in card.text
    assert "- **optimizer**: AdamW 5e-5" in card.text
    assert "Ma, Leilei and Sun, Dengdi and Wang, Lei and Zhao, Haifeng and Luo, Bin" in card.text
    assert "ECAI 2023" in card.text and "2307.09715" in card.text


def test_exports_are_byte_reproducible(tmp_path, model):
    digests = []
    for name in ("a", "b"):
        export_model(model, tmp_path / name, metrics=METRICS, repo_id=REPO)
        digests.append([sha256_file(tmp_path / name / f) for f in ("model.safetensors", "config.json", "README.md")])
    assert digests[0] == digests[1]


def test_export_never_overwrites_or_deletes_what_it_did_not_write(tmp_path, model):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "README.md").write_text("my notes")
    (out / "model.onnx").write_bytes(b"my onnx")
    with pytest.raises(CheckpointFileError, match="not empty.*overwrite"):
        export_model(model, out)
    assert (out / "README.md").read_text() == "my notes" and sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "model.onnx",
    ]
    export_model(model, out, overwrite=True)  # replaces the export files only
    assert (out / "model.onnx").read_bytes() == b"my onnx"  # not ours: kept, and not part of the export
    assert "model.onnx" not in json.loads((out / "config.json").read_text())["sadcl"]["files"]


def test_overridden_variant_does_not_inherit_the_papers_results(tmp_path):
    small = sadcl.create_model("sadcl_coco_448", backbone="test_resnet", hidden_dim=32, ffn_dim=32, img_size=64)
    config = export_model(small, tmp_path / "export")
    assert config["sadcl"]["variant"] is None and config["sadcl"]["metrics"] is None
    assert config["architecture"] == "sadcl"  # timm's generic SADCL entry point, built from model_args
    assert "No results are recorded" in (tmp_path / "export" / "README.md").read_text()


def test_a_folder_named_like_a_variant_does_not_hide_the_variant(tmp_path, monkeypatch, export_dir):
    monkeypatch.chdir(tmp_path)
    export_dir.rename(tmp_path / "sadcl_tiny")
    assert describe_source("sadcl_tiny") == "variant" and describe_source("./sadcl_tiny") == "folder"
    assert describe_source("hf-hub:org/name") == "hub" and describe_source("local-dir:x") == "folder"


@pytest.mark.slow
@pytest.mark.parametrize("prefix", ["", "local-dir:"])
def test_load_exported_from_a_folder(export_dir, model, prefix):
    loaded = load_exported(f"{prefix}{export_dir}")
    assert torch.equal(logits(loaded), logits(model))
    cfg = loaded.pretrained_cfg
    assert cfg["input_size"] == (3, 64, 64) and cfg["label_names"] == model.label_names
    assert cfg["metrics"] == METRICS and cfg["weights"]["sha256"] == sha256_file(export_dir / "model.safetensors")
    again = export_model(loaded, export_dir.parent / "again")  # re-exporting keeps what the export recorded
    assert again["sadcl"]["variant"] == "sadcl_tiny" and again["sadcl"]["metrics"] == METRICS
    first, second = (read_safetensors(d / "model.safetensors") for d in (export_dir, export_dir.parent / "again"))
    assert all(torch.equal(first[0][k], second[0][k]) for k in first[0])
    assert parse_header(second[1], "again").source == "export"  # it descends from the folder named "export"


def test_load_exported_with_a_new_label_set_keeps_the_rest(export_dir, model):
    with pytest.warns(HeadChangeWarning, match="20 labels → 3"):
        loaded = load_exported(export_dir, label_names=["cat", "dog", "bird"])
    assert loaded.label_names == ["cat", "dog", "bird"] and loaded.pretrained_cfg["metrics"] is None
    with pytest.warns(HeadChangeWarning):
        assert load_exported(export_dir, num_classes=5).label_names == ["0", "1", "2", "3", "4"]
    assert torch.equal(
        loaded.transformer.encoder.layers[0].linear1.weight, model.transformer.encoder.layers[0].linear1.weight
    )


def test_load_exported_refuses_bad_folders(export_dir, tmp_path):
    config = json.loads((export_dir / "config.json").read_text())
    config["sadcl"]["weights"]["sha256"] = "0" * 64
    (export_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ChecksumError, match="does not match config.json"):
        load_exported(export_dir)
    (export_dir / "config.json").unlink()
    with pytest.raises(CheckpointFileError, match="not a SADCL export: config.json is missing"):
        load_exported(export_dir)
    with pytest.raises(CheckpointFileError, match="export folder not found"):
        load_exported(f"local-dir:{tmp_path / 'absent'}")
    with pytest.raises(ModelSourceError, match="hf-hub:ORG/NAME"):
        load_exported("hf-hub:no-slash")


@pytest.mark.slow
def test_load_exported_from_the_hub(fake_hub, export_dir, model):
    fake_hub.add_file(REPO, "config.json", (export_dir / "config.json").read_bytes(), lfs=False)
    commit = fake_hub.add_file(REPO, "model.safetensors", (export_dir / "model.safetensors").read_bytes())

    loaded = load_exported(f"hf-hub:{REPO}")

    assert torch.equal(logits(loaded), logits(model))
    assert loaded.pretrained_cfg["source"] == f"hf-hub:{REPO}@{commit}"
    assert loaded.pretrained_cfg["weights"]["revision"] == commit
    served = len(fake_hub.requests)
    load_exported(f"hf-hub:{REPO}@{commit}")  # pinned and cached: no request at all
    assert len(fake_hub.requests) == served
    with pytest.raises(WeightsDownloadError, match="hf-hub:sadcl-test/absent.*does not exist"):
        load_exported("hf-hub:sadcl-test/absent")


def test_load_exported_removes_a_corrupt_download(fake_hub, export_dir):
    fake_hub.add_file(REPO, "config.json", (export_dir / "config.json").read_bytes(), lfs=False)
    fake_hub.add_file(REPO, "model.safetensors", (export_dir / "model.safetensors").read_bytes())
    fake_hub.corrupt(REPO, "model.safetensors")  # same size: huggingface_hub accepts it
    with pytest.raises(ChecksumError, match="corrupt.*removed from the cache"):
        load_exported(f"hf-hub:{REPO}")
    fake_hub.restore(REPO, "model.safetensors", (export_dir / "model.safetensors").read_bytes())
    load_exported(f"hf-hub:{REPO}")  # downloaded afresh


@pytest.mark.slow
def test_push_to_hub_then_download_at_the_pinned_commit(hub_uploads, export_dir, model, capsys):
    record = push_to_hub(export_dir, REPO, token=TOKEN)

    WeightsRecord(**record)
    (commit,) = [c for c in hub_uploads.commits if c.summary.startswith("Upload SADCL export")]
    assert record == {
        "hf_hub_id": REPO,
        "filename": "model.safetensors",
        "revision": commit.oid,
        "sha256": sha256_file(export_dir / "model.safetensors"),
        "size": (export_dir / "model.safetensors").stat().st_size,
    }
    assert sorted(commit.files) == ["README.md", "config.json", "model.safetensors"]
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.index("{") :]) == {"sadcl_tiny": record}
    writes = [(m, p) for m, p in hub_uploads.hub.requests if m == "POST"]
    assert writes == [
        ("POST", "/api/repos/create"),
        ("POST", "/api/validate-yaml"),
        ("POST", f"/api/models/{REPO}/preupload/main"),
        ("POST", f"/api/models/{REPO}/commit/main"),
    ]
    auth = [h.get("authorization") for h in hub_uploads.hub.request_headers]
    assert auth.count(f"Bearer {TOKEN}") >= 3

    path = hf_hub_download(REPO, "model.safetensors", revision=record["revision"])
    assert sha256_file(path) == record["sha256"]
    loaded = load_exported(f"hf-hub:{REPO}@{record['revision']}")
    assert torch.equal(logits(loaded), logits(model))


def test_pushing_an_unchanged_folder_again_keeps_the_commit(hub_uploads, export_dir):
    first = push_to_hub(export_dir, REPO, token=TOKEN)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # huggingface_hub logs "No files have been modified"
        second = push_to_hub(export_dir, REPO, token=TOKEN)
    assert second == first and len(hub_uploads.commits) == 2  # .gitattributes + the export
    assert ("GET", f"/api/models/{REPO}/revision/main") in hub_uploads.hub.requests


def test_push_needs_a_token_and_a_consistent_folder(hub_uploads, export_dir):
    with pytest.raises(PublishError, match="(?s)could not push .* to sadcl-test/tiny-export.*401.*write token"):
        push_to_hub(export_dir, REPO)
    (export_dir / "model.safetensors").write_bytes(b"changed after export")
    with pytest.raises(PublishError, match="changed since `sadcl export`.*run `sadcl export` again"):
        push_to_hub(export_dir, REPO, token=TOKEN)
    assert hub_uploads.commits == []


def test_cli_export_and_push(hub_uploads, tmp_path, model, capsys):
    from sadcl.cli import main
    from sadcl.zoo.loading import checkpoint_metadata, export_state_dict
    from sadcl.zoo.safetensors_io import save_safetensors

    checkpoint = tmp_path / "fine-tuned.safetensors"
    save_safetensors(export_state_dict(model), checkpoint, checkpoint_metadata(model))
    out = tmp_path / "export"
    assert main(["export", str(checkpoint), str(out), "--metrics", '{"mAP": 50.5}', "--repo-id", REPO]) == 0
    assert json.loads((out / "config.json").read_text())["sadcl"]["metrics"] == {"mAP": 50.5}
    assert main(["push", str(out), REPO, "--token", TOKEN]) == 0
    printed = capsys.readouterr().out
    (record,) = json.loads(printed[printed.index("{", printed.index("weights.json")) :]).values()
    assert record["revision"] == hub_uploads.commits[-1].oid
    assert torch.equal(logits(load_exported(f"hf-hub:{REPO}@{record['revision']}")), logits(model))
    assert main(["export", str(checkpoint), str(out), "--metrics", "[1, 2]"]) == 2
    assert "--metrics must be a JSON object of numbers" in capsys.readouterr().err


@pytest.mark.slow
def test_create_model_accepts_hub_and_folder_names(fake_hub, export_dir, model):
    import sadcl

    fake_hub.add_file(REPO, "config.json", (export_dir / "config.json").read_bytes(), lfs=False)
    fake_hub.add_file(REPO, "model.safetensors", (export_dir / "model.safetensors").read_bytes())
    assert torch.equal(logits(sadcl.create_model(f"hf-hub:{REPO}")), logits(model))
    assert torch.equal(logits(sadcl.create_model(str(export_dir))), logits(model))
    with pytest.raises(ModelSourceError, match="checkpoint_path"):
        sadcl.create_model(str(export_dir), checkpoint_path=export_dir / "model.safetensors")


@needs.onnx  # the extra is checked before the (failing) export starts
def test_a_failed_export_leaves_nothing_behind(tmp_path, model, monkeypatch):
    import sadcl.zoo.export as export_mod

    def broken_onnx(*args, **kwargs):
        raise RuntimeError("tracing failed")

    monkeypatch.setattr(export_mod, "export_onnx", broken_onnx)
    with pytest.raises(RuntimeError, match="tracing failed"):
        export_model(model, tmp_path / "new", onnx=True)
    assert not (tmp_path / "new").exists()  # the folder this call created is gone
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(RuntimeError, match="tracing failed"):
        export_model(model, mine, onnx=True, overwrite=True)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]  # the user's file, and nothing half-written
