"""Image loading, the multi-label datasets and the recipe's transforms (sadcl.data)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from sadcl.data import (
    RANDAUGMENT_OPS,
    VOC_CLASSES,
    CocoDataset,
    CSVDataset,
    CutoutPIL,
    FolderDataset,
    ImageLoadError,
    MultiScaleCrop,
    RandAugment,
    VOCDataset,
    eval_transform,
    load_image,
    read_label_names,
    train_transform,
    write_label_names,
)


def _save(path, color=(10, 20, 30), size=(8, 6)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


# ----------------------------------------------------------------------------- load_image


def test_load_image_modes(tmp_path):
    Image.new("L", (4, 3), 77).save(tmp_path / "gray.png")
    Image.new("1", (4, 3), 1).save(tmp_path / "bw.png")
    Image.new("CMYK", (4, 3), (0, 0, 0, 0)).save(tmp_path / "cmyk.jpg")
    for name, expected in [("gray.png", (77, 77, 77)), ("bw.png", (255, 255, 255)), ("cmyk.jpg", (255, 255, 255))]:
        img = load_image(tmp_path / name)
        assert img.mode == "RGB" and img.size == (4, 3), name
        assert np.abs(np.asarray(img, dtype=int)[1, 1] - expected).max() <= 2, name


def test_load_image_alpha_composited_on_black(tmp_path):
    rgba = np.zeros((1, 3, 4), dtype=np.uint8)
    rgba[0, :, :3] = (200, 100, 50)
    rgba[0, :, 3] = (0, 128, 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = np.asarray(load_image(tmp_path / "a.png"), dtype=int)[0]
    assert out[0].tolist() == [0, 0, 0]  # fully transparent -> black, not the hidden colour
    assert np.abs(out[1] - np.array([100, 50, 25])).max() <= 1
    assert out[2].tolist() == [200, 100, 50]

    la = np.stack([np.full((1, 2), 90, np.uint8), np.array([[0, 255]], np.uint8)], -1)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    assert np.asarray(load_image(tmp_path / "la.png"))[0].tolist() == [[0, 0, 0], [90, 90, 90]]


def test_load_image_palette_with_transparency(tmp_path):
    p = Image.new("P", (2, 1))
    p.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    p.putpixel((0, 0), 0)
    p.putpixel((1, 0), 1)
    p.info["transparency"] = 0
    p.save(tmp_path / "p.png", transparency=0)
    assert np.asarray(load_image(tmp_path / "p.png"))[0].tolist() == [[0, 0, 0], [0, 255, 0]]
    p.save(tmp_path / "p.gif")  # opaque palette image
    assert load_image(tmp_path / "p.gif").mode == "RGB"


def test_load_image_16bit_scaled_not_clipped(tmp_path):
    arr = np.array([[0, 1000, 32896, 65535]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    out = np.asarray(load_image(tmp_path / "g16.png"))[0, :, 0]
    assert out.tolist() == [0, 4, 128, 255]  # v / 257: 1000 -> 4, where clipping would give 255
    # a 32-bit "I" image on the 16-bit scale
    out = np.asarray(load_image(Image.fromarray(arr.astype(np.int32))))[0, :, 0]
    assert out.tolist() == [0, 4, 128, 255]


def test_load_image_exif_orientation(tmp_path):
    img = Image.new("RGB", (4, 2), (0, 0, 0))
    img.putpixel((0, 0), (255, 0, 0))  # red at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(tmp_path / "rot.png", exif=exif)  # PNG: lossless, so pixels can be compared exactly
    out = load_image(tmp_path / "rot.png")
    assert out.size == (2, 4)
    arr = np.asarray(out)
    assert arr[0, 1].tolist() == [255, 0, 0] and arr[:, :, 0].sum() == 255  # the red corner is now top-right


def test_load_image_orientation_one_and_later_file_changes(tmp_path):
    """An upright image (tag 1 or none) comes back as decoded, and its pixels no longer depend on the file."""
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 1
    Image.fromarray(arr).save(tmp_path / "one.png", exif=exif)
    Image.fromarray(arr).save(tmp_path / "none.bmp")  # uncompressed
    exif[0x0112] = 3  # rotate 180, in a JPEG's APP1 segment
    Image.fromarray(arr).save(tmp_path / "rot.jpg", exif=exif, quality=100)
    for name in ("one.png", "none.bmp"):
        out = load_image(tmp_path / name)
        (tmp_path / name).write_bytes(b"")  # truncated after loading: the pixels must not change with it
        assert np.array_equal(np.asarray(out), arr), name
    plain = np.asarray(Image.open(tmp_path / "rot.jpg").convert("RGB"))
    assert np.array_equal(np.asarray(load_image(tmp_path / "rot.jpg")), plain[::-1, ::-1])


def test_load_image_errors_name_the_file(tmp_path):
    with pytest.raises(ImageLoadError, match="missing.jpg.*not found"):
        load_image(tmp_path / "missing.jpg")
    (tmp_path / "junk.jpg").write_bytes(b"this is not an image")
    with pytest.raises(ImageLoadError, match="junk.jpg"):
        load_image(tmp_path / "junk.jpg")
    _save(tmp_path / "full.jpg", size=(64, 64))
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="cut.jpg"):
        load_image(tmp_path / "cut.jpg")
    with pytest.raises(ImageLoadError, match="directory"):
        load_image(tmp_path)
    assert isinstance(ImageLoadError("x"), OSError)


def test_load_image_accepts_pil():
    out = load_image(Image.new("L", (3, 3), 5))
    assert out.mode == "RGB" and np.asarray(out).max() == 5


# ----------------------------------------------------------------------------- datasets


def test_csv_long_format(tmp_path):
    _save(tmp_path / "imgs" / "a.png")
    _save(tmp_path / "imgs" / "b.png")
    _save(tmp_path / "imgs" / "c.png")
    (tmp_path / "d.csv").write_text("image,labels\nimgs/a.png,dog|cat\nimgs/b.png, bird ; dog\nimgs/c.png,\n")
    ds = CSVDataset(tmp_path / "d.csv", transform=eval_transform(16))
    assert ds.label_names == ["bird", "cat", "dog"]
    assert ds.targets.dtype == torch.float32
    assert ds.targets.tolist() == [[0, 1, 1], [1, 0, 1], [0, 0, 0]]
    x, y = ds[1]
    assert x.shape == (3, 16, 16) and y.tolist() == [1, 0, 1]
    assert ds.paths[0] == str(tmp_path / "imgs" / "a.png") and len(ds) == 3 and ds.num_skipped == 0

    write_label_names(tmp_path / "names.txt", ["dog", "cat", "bird", "fish"])
    ds = CSVDataset(tmp_path / "d.csv", label_names=tmp_path / "names.txt")
    assert read_label_names(tmp_path / "names.txt") == ds.label_names == ["dog", "cat", "bird", "fish"]
    assert ds.targets[0].tolist() == [1, 1, 0, 0]
    x, _ = ds[0]  # default transform: a [3, H, W] float tensor in [0, 1]
    assert x.shape == (3, 6, 8) and x.dtype == torch.float32 and x.max() <= 1


def test_csv_unknown_label_names_row_and_label(tmp_path):
    (tmp_path / "d.csv").write_text("image,labels\na.png,cat\nb.png,cat|zebra\n")
    with pytest.raises(ValueError, match=r"line 3.*'zebra'"):
        CSVDataset(tmp_path / "d.csv", label_names=["cat", "dog"])


def test_csv_wide_format_and_errors(tmp_path):
    _save(tmp_path / "x" / "a.png")
    (tmp_path / "w.csv").write_text("image,cat,dog\na.png,1,0\na.png,0,1\n")
    ds = CSVDataset(tmp_path / "w.csv", image_root=tmp_path / "x")
    assert ds.label_names == ["cat", "dog"] and ds.targets.tolist() == [[1, 0], [0, 1]]
    assert ds.paths[0] == str(tmp_path / "x" / "a.png")
    assert CSVDataset(tmp_path / "w.csv", label_names=["dog"]).targets.tolist() == [[0], [1]]
    (tmp_path / "bad.csv").write_text("image,cat,dog\na.png,1,2\n")
    with pytest.raises(ValueError, match=r"line 2, column 'dog'.*'2'"):
        CSVDataset(tmp_path / "bad.csv")
    (tmp_path / "nocol.csv").write_text("file,labels\na.png,cat\n")
    with pytest.raises(ValueError, match="no 'image' column"):
        CSVDataset(tmp_path / "nocol.csv")
    with pytest.raises(ValueError, match=r"label column\(s\) \['fish'\]"):
        CSVDataset(tmp_path / "w.csv", label_names=["fish"])


def test_bad_image_raises_or_is_skipped(tmp_path):
    for name in ("a.png", "c.png"):
        _save(tmp_path / name)
    (tmp_path / "b.png").write_bytes(b"garbage")
    (tmp_path / "d.csv").write_text("image,labels\na.png,x\nb.png,y\nmissing.png,y\nc.png,z\n")
    ds = CSVDataset(tmp_path / "d.csv")
    with pytest.raises(ImageLoadError, match="b.png"):
        ds[1]
    with pytest.warns(UserWarning, match="skipped 2"):
        ds = CSVDataset(tmp_path / "d.csv", skip_bad=True)
    assert ds.num_skipped == 2 and len(ds) == 2
    assert ds.skipped == [str(tmp_path / "b.png"), str(tmp_path / "missing.png")]
    # the surviving targets still belong to their images: a -> x, c -> z
    assert [p.split("/")[-1] for p in ds.paths] == ["a.png", "c.png"]
    assert ds.targets.tolist() == [[1, 0, 0], [0, 0, 1]] and ds.label_names == ["x", "y", "z"]


def test_coco_dataset(tmp_path):
    for name in ("1.jpg", "2.jpg", "3.jpg"):
        _save(tmp_path / "img" / name)
    coco = {
        "images": [
            {"id": 30, "file_name": "3.jpg"},
            {"id": 10, "file_name": "1.jpg"},
            {"id": 20, "file_name": "2.jpg"},
        ],
        "categories": [{"id": 7, "name": "zebra"}, {"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 7},
            {"id": 2, "image_id": 10, "category_id": 1},
            {"id": 3, "image_id": 30, "category_id": 3},
            {"id": 4, "image_id": 30, "category_id": 3},
        ],
    }
    (tmp_path / "inst.json").write_text(json.dumps(coco))
    ds = CocoDataset(tmp_path / "inst.json", tmp_path / "img")
    assert ds.label_names == ["person", "car", "zebra"]  # category-id order, not file order
    assert ds.image_ids == [10, 20, 30]
    assert ds.targets.tolist() == [[1, 0, 1], [0, 0, 0], [0, 1, 0]]  # image 20: no annotation, kept negative
    assert ds.paths[1].endswith("2.jpg")
    coco["annotations"].append({"id": 99, "image_id": 10, "category_id": 5})
    (tmp_path / "bad.json").write_text(json.dumps(coco))
    with pytest.raises(ValueError, match="annotation 99.*category id 5"):
        CocoDataset(tmp_path / "bad.json", tmp_path / "img")


def _voc_tree(tmp_path):
    base = tmp_path / "VOCdevkit" / "VOC2007"
    (base / "ImageSets" / "Main").mkdir(parents=True)
    (base / "Annotations").mkdir()
    objs = {"000001": [("dog", 0), ("person", 1)], "000002": [("car", 0), ("car", 1), ("cat", 1)]}
    for image_id, objects in objs.items():
        body = "".join(f"<object><name>{n}</name><difficult>{d}</difficult></object>" for n, d in objects)
        (base / "Annotations" / f"{image_id}.xml").write_text(f"<annotation>{body}</annotation>")
        _save(base / "JPEGImages" / f"{image_id}.jpg")
    (base / "ImageSets" / "Main" / "trainval.txt").write_text("000001\n000002\n")
    return base


def test_voc_dataset_difficult(tmp_path):
    base = _voc_tree(tmp_path)
    idx = {n: i for i, n in enumerate(VOC_CLASSES)}
    ds = VOCDataset(tmp_path)  # found under VOCdevkit/VOC2007
    assert ds.label_names == list(VOC_CLASSES) and ds.targets.shape == (2, 20)
    on = lambda row: sorted(VOC_CLASSES[i] for i in torch.nonzero(row).flatten().tolist())  # noqa: E731
    assert on(ds.targets[0]) == ["dog"]  # difficult-only person -> negative (the authors' convention)
    assert on(ds.targets[1]) == ["car"]
    pos = VOCDataset(base, difficult="positive")
    assert on(pos.targets[0]) == ["dog", "person"] and pos.targets[1, idx["cat"]] == 1
    assert pos.paths[0] == str(base / "JPEGImages" / "000001.jpg")
    with pytest.raises(ValueError, match="difficult"):
        VOCDataset(base, difficult="ignore")
    with pytest.raises(FileNotFoundError, match="test.txt"):
        VOCDataset(base, split="test")
    (base / "Annotations" / "000002.xml").write_text("<annotation><object><name>unicorn</name></object></annotation>")
    with pytest.raises(ValueError, match="000002.xml.*unicorn"):
        VOCDataset(base)


def test_folder_dataset_text_and_json(tmp_path):
    for name in ("a.png", "b.png"):
        _save(tmp_path / "f" / name)
    (tmp_path / "labels.txt").write_text("# file labels\na.png sky sea\n\nb.png tree\n")
    ds = FolderDataset(tmp_path / "f", tmp_path / "labels.txt")
    assert ds.label_names == ["sea", "sky", "tree"] and ds.targets.tolist() == [[1, 1, 0], [0, 0, 1]]
    (tmp_path / "labels.json").write_text(json.dumps({"a.png": ["tree"], "b.png": []}))
    ds = FolderDataset(tmp_path / "f", tmp_path / "labels.json", label_names=["sky", "tree"])
    assert ds.targets.tolist() == [[0, 1], [0, 0]]
    (tmp_path / "idx.json").write_text(json.dumps({"a.png": [1, 0], "b.png": [1]}))
    ds = FolderDataset(tmp_path / "f", tmp_path / "idx.json", label_names=["sky", "tree"])
    assert ds.targets.tolist() == [[1, 1], [0, 1]]
    with pytest.raises(ValueError, match="needs label_names"):
        FolderDataset(tmp_path / "f", tmp_path / "idx.json")
    with pytest.raises(ValueError, match="line 2.*'sky'"):
        FolderDataset(tmp_path / "f", tmp_path / "labels.txt", label_names=["sea", "tree"])


# ----------------------------------------------------------------------------- transforms


def test_eval_transform_matches_manual_resize():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 20, 3), dtype=np.uint8))
    x = eval_transform(12)(img)
    ref = np.asarray(img.resize((12, 12), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    ref = (ref - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    assert x.shape == (3, 12, 12)
    assert torch.allclose(x, torch.from_numpy(ref).permute(2, 0, 1).float(), atol=1e-5)


def test_multiscale_crop_candidates_and_offsets():
    msc = MultiScaleCrop(448)
    pairs = msc.crop_sizes(512, 512)
    sides = [512, 448, 384, 337, 256]  # int(512 * s); 448 is exact here
    expected = {(sides[j], sides[i]) for i in range(5) for j in range(5) if abs(i - j) <= 2}
    assert set(pairs) == expected and len(pairs) == 19
    # a side within 3 px of the output snaps to it: int(510 * 0.875) = 446 -> 448
    assert {w for w, _ in msc.crop_sizes(510, 510)} == {510, 448, 382, 336, 255}
    offsets = MultiScaleCrop.fixed_offsets(512, 512, 256, 384)
    assert len(offsets) == 13 and len(set(offsets)) == 13
    assert set(offsets) == {
        (64 * a, 32 * b)
        for a, b in [
            (0, 0),
            (4, 0),
            (0, 4),
            (4, 4),
            (2, 2),
            (0, 2),
            (4, 2),
            (2, 4),
            (2, 0),
            (1, 1),
            (3, 1),
            (1, 3),
            (3, 3),
        ]
    }
    random.seed(0)
    seen = set()
    for _ in range(3000):
        left, top, w, h = msc.get_params(512, 512)
        assert (w, h) in expected and (left, top) in MultiScaleCrop.fixed_offsets(512, 512, w, h)
        seen.add((w, h))
    assert seen == expected


def test_multiscale_crop_output_and_seed():
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    msc = MultiScaleCrop(56)
    random.seed(3)
    a = msc(img)
    random.seed(3)
    b = msc(img)
    assert a.size == (56, 56) and np.array_equal(np.asarray(a), np.asarray(b))
    # the output is the drawn crop of the input, resized
    random.seed(3)
    left, top, w, h = msc.get_params(64, 64)
    ref = img.crop((left, top, left + w, top + h)).resize((56, 56), Image.Resampling.BILINEAR)
    assert np.array_equal(np.asarray(a), np.asarray(ref))


def test_cutout_one_hole_one_colour():
    img = Image.new("RGB", (40, 40), (0, 0, 0))
    random.seed(5)
    out = CutoutPIL(0.5)(img)
    assert np.asarray(img).max() == 0  # input untouched
    arr = np.asarray(out)
    mask = arr.any(-1)
    ys, xs = np.nonzero(mask)
    assert 0 < mask.sum() <= 20 * 20
    assert mask.sum() == (np.ptp(ys) + 1) * (np.ptp(xs) + 1)  # one solid rectangle
    assert len({tuple(c) for c in arr[mask]}) == 1
    random.seed(5)
    (left, top, right, bottom), _ = CutoutPIL(0.5).get_params(40, 40)
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (left, top, right, bottom)


def test_randaugment_ops_and_seed():
    img = Image.fromarray(np.random.default_rng(2).integers(0, 256, (24, 24, 3), dtype=np.uint8))
    assert len(RANDAUGMENT_OPS) == 15
    for name in RANDAUGMENT_OPS:
        for m in (1, 9):
            out = RandAugment.apply_op(img, name, m)
            assert out.mode == "RGB" and out.size == img.size, name
    assert not np.array_equal(np.asarray(RandAugment.apply_op(img, "Rotate", 9)), np.asarray(img))
    ra = RandAugment()
    random.seed(7)
    a = [np.asarray(ra(img)) for _ in range(5)]
    random.seed(7)
    b = [np.asarray(ra(img)) for _ in range(5)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    with pytest.raises(ValueError, match="unknown RandAugment op"):
        RandAugment(ops=["Blur"])


@pytest.mark.parametrize("recipe", ["sadcl", "baseline"])
def test_train_transform_shapes_and_reproducible(recipe):
    img = Image.fromarray(np.random.default_rng(3).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    tf = train_transform(32, recipe=recipe)
    random.seed(0)
    torch.manual_seed(0)
    a = tf(img)
    random.seed(0)
    torch.manual_seed(0)
    b = tf(img)
    assert a.shape == (3, 32, 32) and torch.equal(a, b)


def test_train_transform_structure():
    sadcl = train_transform(448).transforms
    assert list(sadcl[0].size) == [512, 512] and isinstance(sadcl[1], MultiScaleCrop) and sadcl[1].size == (448, 448)
    assert type(sadcl[2]).__name__ == "RandomHorizontalFlip"
    assert "RandomHorizontalFlip" not in [type(t).__name__ for t in train_transform(448, flip=False).transforms]
    base = [type(t).__name__ for t in train_transform(448, recipe="baseline").transforms]
    assert base == ["Resize", "CutoutPIL", "RandAugment", "ToTensor", "Normalize"]
    with pytest.raises(ValueError, match="recipe"):
        train_transform(448, recipe="q2l")
