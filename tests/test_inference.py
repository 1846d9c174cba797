"""sadcl.predict: inputs of every kind, preprocessing from metadata, ordering, filtering, bad files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import sadcl
from sadcl.inference import preprocess


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return sadcl.create_model("sadcl_tiny").eval()


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8))
    paths = {}
    paths["rgb"] = tmp_path / "rgb.jpg"
    rgb.save(paths["rgb"])
    paths["gray"] = tmp_path / "gray.png"
    rgb.convert("L").save(paths["gray"])
    paths["rgba"] = tmp_path / "rgba.png"
    rgb.convert("RGBA").save(paths["rgba"])
    paths["palette"] = tmp_path / "palette.gif"
    rgb.convert("P").save(paths["palette"])
    paths["16bit"] = tmp_path / "16bit.png"
    Image.fromarray(rng.integers(0, 65535, (50, 70), dtype=np.uint16)).save(paths["16bit"])
    return paths


def test_every_input_kind(model, images):
    for p in images.values():
        res = sadcl.predict(model, p)
        assert len(res) == 1 and len(res[0]) == 20
    pil = Image.open(images["rgb"])
    assert sadcl.predict(model, pil) == sadcl.predict(model, str(images["rgb"]))
    batch = sadcl.predict(model, list(images.values()), batch_size=2)
    assert len(batch) == len(images)
    x = torch.stack([preprocess(images["rgb"], model.pretrained_cfg)])
    assert sadcl.predict(model, x)[0] == pytest.approx(sadcl.predict(model, images["rgb"])[0], abs=1e-6)


def test_preprocessing_follows_metadata(model, images):
    x = preprocess(images["rgb"], model.pretrained_cfg)
    assert x.shape == (3, 64, 64)
    img = Image.open(images["rgb"]).convert("RGB").resize((64, 64), Image.BILINEAR)
    expected = (
        torch.from_numpy(np.array(img)).permute(2, 0, 1) / 255 - torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    ) / torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    assert torch.allclose(x, expected, atol=1e-6)


def test_exif_orientation_is_applied(model, tmp_path):
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, :40] = 255  # left half white
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    img.save(tmp_path / "rot.jpg", exif=exif)
    upright = img.transpose(Image.Transpose.ROTATE_270)
    upright.save(tmp_path / "upright.png")
    a = preprocess(tmp_path / "rot.jpg", model.pretrained_cfg)
    b = preprocess(tmp_path / "upright.png", model.pretrained_cfg)
    assert (a - b).abs().mean() < 0.1  # JPEG noise only; without EXIF handling they differ by ~2


def test_scores_sorted_and_filtered(model, images):
    full = sadcl.predict(model, images["rgb"])[0]
    scores = list(full.values())
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in scores)
    x = torch.stack([preprocess(images["rgb"], model.pretrained_cfg)])
    with torch.no_grad():
        expected = torch.sigmoid(model(x))[0]
    assert full[model.label_names[0]] == pytest.approx(expected[0].item(), abs=1e-6)
    top = sadcl.predict(model, images["rgb"], top_k=3)[0]
    assert list(top) == list(full)[:3]
    thr = scores[4]
    assert list(sadcl.predict(model, images["rgb"], threshold=thr)[0]) == list(full)[:4]
    with pytest.raises(ValueError, match="top_k"):
        sadcl.predict(model, images["rgb"], top_k=0)
    with pytest.raises(ValueError, match="threshold"):
        sadcl.predict(model, images["rgb"], threshold=1.5)


def test_bad_files_are_named(model, tmp_path):
    with pytest.raises(OSError, match="missing.png"):
        sadcl.predict(model, tmp_path / "missing.png")
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    with pytest.raises(OSError, match="corrupt.jpg"):
        sadcl.predict(model, tmp_path / "corrupt.jpg")
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        sadcl.predict(model, torch.zeros(3, 64, 64))


def test_restores_training_mode_and_model_stays_trainable(model, images):
    model.train()
    sadcl.predict(model, images["rgb"])
    sadcl.attention_maps(model, images["rgb"])
    assert model.training
    assert not any(p.is_inference() for p in model.parameters())
    x = torch.stack([preprocess(images["rgb"], model.pretrained_cfg)] * 2)
    model(x).sum().backward()  # still trainable after predict (parameters are not inference tensors)
    model.zero_grad()
    model.eval()


def test_attention_maps_sum_to_one(model, images):
    maps = sadcl.attention_maps(model, [images["rgb"], images["gray"]])
    assert maps.shape == (2, 20, 2, 2)
    assert torch.allclose(maps.sum((-2, -1)), torch.ones(2, 20), atol=1e-5)
