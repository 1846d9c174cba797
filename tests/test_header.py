"""Self-describing weights files, untrusted metadata, and timm's interface on SADCL models."""

from __future__ import annotations

import json
import socket
import struct

import pytest
import timm
import torch
from safetensors.torch import save

import sadcl
from sadcl.cli import main
from sadcl.zoo.factory import ModelSourceError
from sadcl.zoo.header import HeaderError, parse_header
from sadcl.zoo.loading import checkpoint_metadata, export_state_dict
from sadcl.zoo.safetensors_io import read_safetensors, save_safetensors, serialize
from sadcl.zoo.weights import CheckpointFileError, sha256_file

TINY = dict(hidden_dim=32, ffn_dim=32, proj_dim=16)


@pytest.fixture(scope="module")
def tiny() -> sadcl.SADCL:
    torch.manual_seed(0)
    return sadcl.create_model("sadcl_tiny", **TINY).eval()


def write_with_header(path, model, mutate):
    """A weights file whose ``sadcl`` header went through ``mutate(header_dict)``."""
    meta = checkpoint_metadata(model)
    header = json.loads(meta["sadcl"])
    mutate(header)
    meta["sadcl"] = json.dumps(header)
    save_safetensors(export_state_dict(model), path, meta)
    return path


# ----------------------------------------------------------------------------- the file format
def test_writer_is_deterministic_and_matches_safetensors_own_bytes(tmp_path, tiny):
    state = export_state_dict(tiny)
    ours = serialize(state, {"format": "pt"})
    assert ours == save(state, metadata={"format": "pt"})  # the same layout as safetensors' own writer
    a = save_safetensors(state, tmp_path / "a.safetensors", checkpoint_metadata(tiny))
    b = save_safetensors(dict(reversed(list(state.items()))), tmp_path / "b.safetensors", checkpoint_metadata(tiny))
    assert a == b == sha256_file(tmp_path / "a.safetensors")  # same weights and header: same sha256
    header = parse_header(read_safetensors(tmp_path / "a.safetensors")[1], "a")
    assert header.format_version == 2 and header.config == tiny.config and header.variant is None
    assert header.preprocessing.to_dict()["crop_mode"] == "squash" and header.sadcl_version == sadcl.__version__


def test_files_of_sadcl_0_1_keep_loading(tmp_path, tiny):
    legacy = {
        "format": "pt",
        "sadcl_config": json.dumps(tiny.config),
        "sadcl_variant": "sadcl_tiny",
        "sadcl_training": json.dumps({"epoch": 3}),
    }
    save_safetensors(export_state_dict(tiny), tmp_path / "old.safetensors", legacy)
    model = sadcl.create_model(tmp_path / "old.safetensors").eval()
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(model(x), tiny(x)) and model.label_names == tiny.label_names
    shipped = sadcl.create_model("sadcl_fashion_mosaic", pretrained=True)  # a version-1 file in the package
    assert shipped.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)


def test_a_file_without_a_header_needs_its_variant(tmp_path, tiny):
    save_safetensors(export_state_dict(tiny), tmp_path / "bare.safetensors", {"format": "pt"})
    with pytest.raises(CheckpointFileError, match="bare.safetensors does not describe itself"):
        sadcl.create_model(tmp_path / "bare.safetensors")
    model = sadcl.create_model("sadcl_tiny", checkpoint_path=tmp_path / "bare.safetensors", **TINY)
    assert torch.equal(model.fc.W, tiny.fc.W)


# ----------------------------------------------------------------------------- untrusted metadata
@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda h: h["config"].update(backbone="hf-hub:evil/backbone"), "config.backbone"),
        (lambda h: h["config"].update(backbone="not_a_timm_model"), "config.backbone"),
        (lambda h: h["config"].update(num_classes=300_000_000), "config.num_classes"),
        (lambda h: h["config"].update(hidden_dim="32"), "config.hidden_dim"),
        (lambda h: h["config"].update(label_names={"a": 1}), "config.label_names"),
        (lambda h: h["config"].update(label_names=["x"] * 20), "config.label_names"),
        (lambda h: h["config"].update(dropout=float("inf")), "config.dropout"),
        (lambda h: h["config"].update(sneaky=1), "config has unknown key"),
        (lambda h: h.update(config=[1, 2]), "config must be a JSON object"),
        (lambda h: h["preprocessing"].update(std=[0, 0, 0]), "preprocessing: std"),
        (lambda h: h["preprocessing"].update(input_size=[3, 10**9, 64]), "preprocessing: input_size"),
        (lambda h: h["preprocessing"].update(interpolation={"x": 1}), "preprocessing: interpolation"),
        (lambda h: h.update(format_version=99), "newer sadcl"),
        (lambda h: h.update(variant=["list"]), "variant must be a string"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_malformed_headers_are_one_clear_error(tmp_path, tiny, mutate, field):
    path = write_with_header(tmp_path / "bad.safetensors", tiny, mutate)
    with pytest.raises(HeaderError) as info:
        sadcl.create_model(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and field in message


def test_a_header_never_reaches_the_network(tmp_path, tiny, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("sadcl tried to open a network connection")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    path = write_with_header(tmp_path / "w.safetensors", tiny, lambda h: h["config"].update(pretrained_backbone=True))
    model = sadcl.create_model(path)  # pretrained_backbone is never taken from a file
    assert torch.equal(model.fc.W, tiny.fc.W)


def test_a_huge_claimed_architecture_allocates_nothing(tmp_path, tiny):
    """The network is built on the meta device and checked against the file's tensors before anything is read."""
    path = write_with_header(
        tmp_path / "w.safetensors", tiny, lambda h: h["config"].update(hidden_dim=16_384, ffn_dim=65_536, num_heads=4)
    )
    with pytest.raises(RuntimeError, match="does not fit"):
        sadcl.create_model(path)


def test_a_variant_and_a_file_that_disagree_name_both(tmp_path, tiny):
    save_safetensors(export_state_dict(tiny), tmp_path / "w.safetensors", checkpoint_metadata(tiny))
    with pytest.raises(
        ModelSourceError,
        match=r"w.safetensors records .*hidden_dim 32.*not the architecture of "
        r"sadcl_tiny.*hidden_dim 64",
    ):
        sadcl.create_model("sadcl_tiny", checkpoint_path=tmp_path / "w.safetensors")


def test_cli_predict_needs_no_model_for_a_file_sadcl_wrote(tmp_path, tiny, capsys):
    from PIL import Image

    save_safetensors(export_state_dict(tiny), tmp_path / "w.safetensors", checkpoint_metadata(tiny))
    Image.new("RGB", (30, 20), (200, 10, 10)).save(tmp_path / "red.png")
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(tmp_path / "w.safetensors"),
                str(tmp_path / "red.png"),
                "--json",
                "--top-k",
                "3",
            ]
        )
        == 0
    )
    (scores,) = json.loads(capsys.readouterr().out).values()
    want = sadcl.predict(tiny, tmp_path / "red.png", top_k=3)[0]
    assert list(scores) == list(want) and all(abs(scores[k] - want[k]) < 1e-6 for k in want)


# ----------------------------------------------------------------------------- timm's interface
def test_timm_lists_and_builds_the_variants_with_weights():
    assert timm.list_pretrained("sadcl_*") == ["sadcl_fashion_mosaic"]
    assert set(timm.list_models("sadcl_*")) == set(sadcl.list_models())
    model = timm.create_model("sadcl_fashion_mosaic", pretrained=True)
    reference = sadcl.create_model("sadcl_fashion_mosaic", pretrained=True)
    assert torch.equal(model.fc.W, reference.fc.W) and model.default_cfg is model.pretrained_cfg


def test_pretrained_cfg_overlay_is_honoured(tmp_path, tiny):
    save_safetensors(export_state_dict(tiny), tmp_path / "w.safetensors", checkpoint_metadata(tiny))
    model = timm.create_model(
        "sadcl_tiny", pretrained_cfg_overlay=dict(file=str(tmp_path / "w.safetensors"), mean=(0.5, 0.5, 0.5)), **TINY
    )
    assert torch.equal(model.fc.W, tiny.fc.W)
    assert timm.data.resolve_model_data_config(model)["mean"] == (0.5, 0.5, 0.5)
    with pytest.raises(ModelSourceError, match="std must be three finite numbers > 0"):
        timm.create_model("sadcl_tiny", pretrained_cfg_overlay=dict(std=(0, 1, 1)))


def test_the_uniform_model_interface(tiny):
    model = sadcl.create_model("sadcl_tiny", **TINY)
    x = torch.randn(2, 3, 64, 64)
    h = model.forward_features(x)
    assert torch.equal(model.forward_head(h, pre_logits=True), h) and model.forward_head(h).shape == (2, 20)
    assert model.get_classifier() is model.fc
    model.reset_classifier(3, label_names=["cat", "dog", "car"])
    assert model.label_names == ["cat", "dog", "car"] and model(x).shape == (2, 3)
    assert model.pretrained_cfg["label_names"] == ["cat", "dog", "car"]


def test_header_length_is_bounded(tmp_path):
    path = tmp_path / "huge_header.safetensors"
    path.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(CheckpointFileError, match="huge_header.safetensors"):
        sadcl.create_model(path)


def test_a_run_started_from_the_hub_evaluates_from_its_file(tmp_path, tiny, fake_hub, capsys):
    from test_train import write_csv_dataset

    from sadcl.zoo.export import export_model

    export_model(tiny, tmp_path / "export")
    for name in ("config.json", "model.safetensors"):
        fake_hub.add_file("org/tiny", name, (tmp_path / "export" / name).read_bytes(), lfs=name.endswith("tensors"))
    train_csv = write_csv_dataset(tmp_path, 8, 0, "train")
    val_csv = write_csv_dataset(tmp_path, 5, 1, "val")
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(train_csv),
                "--val-data",
                str(val_csv),
                "--model",
                "hf-hub:org/tiny",
                "--img-size",
                "64",
                "--epochs",
                "1",
                "--batch-size",
                "4",
                "--num-workers",
                "0",
                "--output",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    header = parse_header(read_safetensors(out / "best.safetensors")[1], "best")
    assert header.source.startswith("hf-hub:org/tiny@") and header.config["label_names"] == ["car", "cat", "dog"]
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(out / "best.safetensors"),
                "--data",
                str(val_csv),
                "--num-workers",
                "0",
                "--output",
                str(tmp_path / "eval.json"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "eval.json").read_text())["num_images"] == 5


def test_one_list_of_constructor_keywords():
    import inspect

    from sadcl.model import CONSTRUCTOR_KEYS
    from sadcl.zoo.header import CONFIG_KEYS

    assert CONSTRUCTOR_KEYS == tuple(p for p in inspect.signature(sadcl.SADCL.__init__).parameters if p != "self")
    assert set(CONFIG_KEYS) == set(CONSTRUCTOR_KEYS) - {"pretrained_backbone"}  # never taken from a file


def test_special_files_and_pickles_are_refused_as_model_sources(tmp_path, tiny):
    import os

    from sadcl.zoo.export import export_model

    os.mkfifo(tmp_path / "pipe.safetensors")
    with pytest.raises(CheckpointFileError, match="pipe.safetensors: it is a FIFO"):
        sadcl.create_model(tmp_path / "pipe.safetensors")  # refused before it is opened: never blocks
    export_model(tiny, tmp_path / "export")
    (tmp_path / "export" / "config.json").unlink()
    os.mkfifo(tmp_path / "export" / "config.json")
    with pytest.raises(CheckpointFileError, match="config.json: it is a FIFO"):
        sadcl.create_model(tmp_path / "export")
    (tmp_path / "last.pt").write_bytes(b"PK\x03\x04")
    with pytest.raises(CheckpointFileError, match="last.pt is a PyTorch pickle file.*sadcl convert.*--resume"):
        sadcl.create_model(tmp_path / "last.pt")


def test_a_missing_path_is_not_called_an_unknown_model(tmp_path):
    with pytest.raises(ModelSourceError, match=r"no file or folder '.*exports/mine'.*variant name"):
        sadcl.create_model(str(tmp_path / "exports" / "mine"))
    with pytest.raises(ValueError, match="Unknown SADCL model 'sadcl_coco'.*Did you mean"):
        sadcl.create_model("sadcl_coco")
