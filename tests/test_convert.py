"""The authors' SADCL and Query2Label checkpoints → our SADCL: key mapping, exactness, strictness, safety."""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import pytest
import torch

import sadcl
from sadcl.model import sine_position_encoding
from sadcl.zoo.convert import (
    OfficialCheckpointWarning,
    checkpoint_filter_fn,
    convert_checkpoint,
    load_official_checkpoint,
)
from sadcl.zoo.safetensors_io import read_safetensors
from sadcl.zoo.weights import CheckpointFileError, sha256_file

OFFICIAL_KEYS = Path(__file__).resolve().parent / "data" / "official_keys.txt"  # copy of shared/docs/official_keys.txt
# test_resnet has 96 channels: hidden_dim 96 gives the authors' released layout (input_proj is Identity).
SAME_WIDTH = dict(hidden_dim=96, ffn_dim=192)
Q2L_ABSENT = ("memorybank", "prototype", "proj_head.")


def tiny(seed: int, **overrides) -> sadcl.SADCL:
    torch.manual_seed(seed)
    return sadcl.create_model("sadcl_tiny", **{**SAME_WIDTH, **overrides}).eval()


def authors_state_dict(model: sadcl.SADCL, *, memory_rows: int = 4, prefix: str = "module.") -> dict:
    """``model``'s weights in the authors' layout, key for key as in official_keys.txt [A]."""
    d = model.hidden_dim
    side = model.config["img_size"] // 32
    sd = {
        "memorybank": torch.randn(memory_rows, model.num_classes, d),
        "prototype": model.prototypes.detach().clone()[None],
    }
    for key, value in model.state_dict().items():
        if key.startswith("backbone."):
            sd["backbone.0.body." + key[len("backbone.") :]] = value.clone()
    sd["backbone.1.pe"] = sine_position_encoding(side, side, d)[None]
    rest = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("backbone.") and k != "prototypes"}
    sd.update(rest)
    return {prefix + k: v for k, v in sd.items()}


def training_checkpoint(state_dict: dict) -> dict:
    """What the authors' main_worker saves (REFERENCE.md b.4)."""
    optimizer = {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2)}},
        "param_groups": [{"lr": 5e-5, "weight_decay": 1e-2, "params": [0]}],
    }
    return {"epoch": 7, "arch": "resnet101", "state_dict": state_dict, "best_mAP": 85.67, "optimizer": optimizer}


def outputs(model: sadcl.SADCL, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        h = model.forward_features(x)
        return model.forward_head(h), model.project(h), model.project(model.prototypes)


@pytest.mark.parametrize("overrides", [{}, {"hidden_dim": 64, "ffn_dim": 128}], ids=["identity-proj", "input-proj"])
def test_authors_checkpoint_loads_exactly(tmp_path, overrides):
    source = tiny(0, **overrides)
    path = tmp_path / "model_best.pth.tar"
    torch.save(training_checkpoint(authors_state_dict(source)), path)
    target = tiny(1, **overrides)
    assert not torch.equal(target.fc.W, source.fc.W)

    report = load_official_checkpoint(target, path)

    assert report.ok and report.kind == "sadcl" and report.initialised == []
    assert set(report.dropped) == {"backbone.1.pe", "memorybank"}
    assert report.extras == {"epoch": 7, "arch": "resnet101", "best_mAP": 85.67}
    assert "2x2 feature map" in report.notes[0]
    assert set(report.loaded) == set(target.state_dict())
    assert any(k.startswith("input_proj.") for k in report.loaded) == bool(overrides)
    x = torch.randn(2, 3, 64, 64)
    for got, want in zip(outputs(target, x), outputs(source, x)):
        assert torch.equal(got, want)


def test_convert_writes_our_safetensors_with_config(tmp_path):
    source = tiny(0)
    path = tmp_path / "checkpoint.pth"
    torch.save(training_checkpoint(authors_state_dict(source, prefix="")), path)  # EMA checkpoints: no prefix
    out = tmp_path / "converted.safetensors"

    result = convert_checkpoint(path, out, "sadcl_tiny", **SAME_WIDTH)

    assert result["sha256"] == sha256_file(out) and result["size"] == out.stat().st_size
    state_dict, metadata = read_safetensors(out)
    assert "memorybank" not in state_dict and state_dict["prototypes"].shape == (20, 96)
    header = json.loads(metadata["sadcl"])
    assert header["config"]["hidden_dim"] == 96 and header["source"] == f"converted from {path.name}"
    loaded = sadcl.create_model("sadcl_tiny", **SAME_WIDTH, checkpoint_path=out).eval()
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(loaded(x), source(x))


def test_query2label_checkpoint_loads_strictly_and_says_what_is_initialised(tmp_path):
    source = tiny(0)
    q2l = {k: v for k, v in authors_state_dict(source).items() if not k[len("module.") :].startswith(Q2L_ABSENT)}
    path = tmp_path / "checkpoint.pkl"
    torch.save({"state_dict": q2l}, path)
    target = tiny(1)
    head_before = target.proj_head.layers[0].weight.clone()
    prototypes_before = target.prototypes.detach().clone()

    with pytest.warns(OfficialCheckpointWarning, match="Query2Label checkpoint.*keep their initialisation"):
        report = load_official_checkpoint(target, path, strict=True)

    assert report.kind == "query2label" and report.ok
    assert report.initialised == [
        "proj_head.layers.0.bias",
        "proj_head.layers.0.weight",
        "proj_head.layers.1.bias",
        "proj_head.layers.1.weight",
        "prototypes",
    ]
    assert report.dropped == {"backbone.1.pe": report.dropped["backbone.1.pe"]}
    assert "left at initialisation (5)" in str(report)
    assert torch.equal(target.proj_head.layers[0].weight, head_before)
    assert torch.equal(target.prototypes, prototypes_before)
    x = torch.randn(2, 3, 64, 64)
    assert torch.equal(outputs(target, x)[0], outputs(source, x)[0])


def test_unmapped_key_is_an_error_under_strict_and_reported_otherwise():
    source = tiny(0)
    sd = authors_state_dict(source)
    # A Query2Label model trained without rm_self_attn_dec has decoder self-attention: we have none.
    stray = "transformer.decoder.layers.0.self_attn.in_proj_weight"
    sd["module." + stray] = torch.zeros(3 * 96, 96)
    with pytest.raises(RuntimeError, match=re.escape(f"checkpoint keys with no model key (1): {stray}")):
        load_official_checkpoint(tiny(1), sd)

    target = tiny(1)
    with pytest.warns(OfficialCheckpointWarning, match="strict=False"):
        report = load_official_checkpoint(target, sd, strict=False)
    assert report.unexpected == [stray] and not report.ok
    assert torch.equal(target.fc.W, source.fc.W)  # everything else was loaded


def test_missing_and_mismatched_keys_are_listed():
    sd = authors_state_dict(tiny(0))
    del sd["module.fc.b"]
    with pytest.raises(RuntimeError, match=r"model keys missing from the checkpoint \(1\): fc\.b"):
        load_official_checkpoint(tiny(1), sd)

    coco = authors_state_dict(tiny(0, num_classes=80))  # an 80-label checkpoint into a 20-label model
    with pytest.raises(RuntimeError, match=r"shape mismatches \(4\): .*fc\.b: checkpoint \(1, 80\) vs model \(1, 20\)"):
        load_official_checkpoint(tiny(1), coco)


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = tmp_path / "checkpoint.pth"
    torch.save({"state_dict": {"fc.b": torch.zeros(1, 20)}, "args": Payload()}, path)
    with pytest.raises(CheckpointFileError, match=r"cannot be read safely.*references (posix|nt)\.system"):
        load_official_checkpoint(tiny(1), path)
    assert not marker.exists()


def test_unreadable_inputs_give_clear_errors(tmp_path):
    with pytest.raises(CheckpointFileError, match="checkpoint file not found"):
        load_official_checkpoint(tiny(1), tmp_path / "absent.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointFileError, match="garbage.pth is not a readable PyTorch checkpoint"):
        load_official_checkpoint(tiny(1), garbage)
    garbage.write_bytes(b"")
    with pytest.raises(CheckpointFileError, match="garbage.pth is not a readable PyTorch checkpoint"):
        load_official_checkpoint(tiny(1), garbage)
    with pytest.raises(ValueError, match=r"found no state dict.*\['epoch'\]"):
        load_official_checkpoint(tiny(1), {"epoch": 3})


def parse_official_keys(section: str) -> dict[str, tuple[int, ...]]:
    """Key → shape of one section ([A] SADCL, [B] Query2Label) of the dump of the authors' models."""
    keys, current = {}, None
    for line in OFFICIAL_KEYS.read_text().splitlines():
        if line.startswith("## ["):
            current = line[4]
        elif current == section and line and not line.startswith("#"):
            name, shape = line.split("\t")[:2]
            keys[name] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    return keys


@pytest.mark.parametrize("section, count", [("A", 568), ("B", 562)])
def test_official_key_lists_map_onto_the_full_model(section, count):
    """Every key of the authors' ResNet-101/448/COCO models maps to a model key of the same shape."""
    official = parse_official_keys(section)
    assert len(official) == count
    with torch.device("meta"):
        model = sadcl.create_model("sadcl_coco_448")
        state_dict = {k: torch.empty(shape) for k, shape in official.items()}
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}

    mapped = checkpoint_filter_fn({"module." + k: v for k, v in state_dict.items()}, model)

    assert {k: tuple(v.shape) for k, v in mapped.items()}.items() <= expected.items()
    not_covered = set(expected) - set(mapped)
    if section == "A":
        assert not_covered == set()
    else:
        assert not_covered == {"prototypes"} | {k for k in expected if k.startswith("proj_head.")}
    assert len(official) - len(mapped) == (2 if section == "A" else 1)  # pe (+ memorybank) dropped

    if section == "A":
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            report = load_official_checkpoint(model, state_dict)
    else:
        with pytest.warns(OfficialCheckpointWarning, match="Query2Label"):
            report = load_official_checkpoint(model, state_dict)
    assert report.ok and len(report.loaded) == len(mapped)


def test_cli_convert(tmp_path, capsys):
    from sadcl.cli import main

    source = tiny(0)
    path = tmp_path / "model_best.pth.tar"
    torch.save(training_checkpoint(authors_state_dict(source)), path)
    out = tmp_path / "sadcl_tiny.safetensors"
    args = ["convert", str(path), str(out), "--variant", "sadcl_tiny", "--hidden-dim", "96", "--ffn-dim", "192"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"sha256 {sha256_file(out)}" in printed and "sadcl checkpoint, 121 tensors loaded" in printed

    bad = authors_state_dict(source)
    bad["module.extra.weight"] = torch.zeros(1)
    torch.save({"state_dict": bad}, path)
    assert main(args) == 2
    assert "checkpoint keys with no model key (1): extra.weight" in capsys.readouterr().err
