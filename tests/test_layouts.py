"""The paper's five datasets in their on-disk layouts (sadcl.data.layouts): small real fake trees validated and
loaded, broken trees refused with one line naming the path, and `sadcl train`/`sadcl eval` reading them."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from fakelayouts import break_tree, expected_targets, fashion_targets, make_tree

import sadcl
from sadcl import cli
from sadcl.cli import main
from sadcl.data.labels import read_labels
from sadcl.data.layouts import LAYOUTS, LayoutError, check_layout, load_split
from sadcl.train.data import DATA_FORMATS, DataSpec, build_dataset
from sadcl.train.options import data_specs
from sadcl.zoo.loading import checkpoint_metadata, export_state_dict
from sadcl.zoo.safetensors_io import save_safetensors

N_TRAIN, N_VAL = 24, 12
LABEL_SETS = {"coco2014": "coco80", "voc2007": "voc20", "voc2012": "voc20", "nuswide": "nuswide81", "vg500": "vg500"}


def expected(name: str) -> dict[str, np.ndarray]:
    """The targets each split of ``make_tree(name, ...)`` must load, in load order."""
    out = {split: expected_targets(name, f) for split, f in fashion_targets(N_TRAIN, N_VAL).items()}
    train = out["train"]
    if name in ("coco2014", "vg500"):
        train[0] = 0  # the image without annotations / with an empty label list
    elif name.startswith("voc"):
        train[1] = 0  # the image whose objects are all difficult
    elif name == "nuswide":
        out["train"] = train[1:]  # the image without any label is dropped
    return out


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", LAYOUTS)
def test_each_layout_is_validated_and_loaded(name, tmp_path):
    root = make_tree(name, tmp_path / name)
    report = check_layout(name, root, verify_images=True)
    want = expected(name)
    assert report.dataset == name and set(report.splits) == {"train", "val"}
    for split, s in report.splits.items():
        assert (s.images, s.labels) == (len(want[split]), len(read_labels(LABEL_SETS[name])))
        assert s.positives == int(want[split].sum()) and s.missing == 0 and s.unreadable == 0
        assert s.sample_problem is None
    train, val = report.splits["train"], report.splits["val"]
    assert train.empty == 1 and val.empty == 0  # each tree has one image without a label in train
    assert train.empty_dropped == (name == "nuswide")
    assert train.unlisted == 1  # unlisted_extra.jpg
    text = "\n".join(report.lines())
    assert f"{len(want['train'])} images" in text and ("dropped" in text) == (name == "nuswide")

    for split in ("train", "val"):
        ds = load_split(name, root, split)
        assert ds.targets.shape == want[split].shape and list(ds.label_names) == list(read_labels(LABEL_SETS[name]))
        np.testing.assert_array_equal(ds.targets.numpy(), want[split])
        assert all(os.path.isfile(p) for p in ds.paths)
        x, y = ds[0]
        assert x.shape == (3, 56, 56) and torch.equal(y, torch.from_numpy(want[split][0]))


def test_known_images_and_paths(tmp_path):
    """File names as each layout spells them: COCO in image-id order, NUS-WIDE's backslashes turned into folders."""
    coco = load_split("coco2014", make_tree("coco2014", tmp_path / "coco"), "val")
    assert [Path(p).name for p in coco.paths[:2]] == ["COCO_val2014_000000100009.jpg", "COCO_val2014_000000100016.jpg"]
    nus_root = make_tree("nuswide", tmp_path / "nus")
    first = (nus_root / "ImageList" / "TestImagelist.txt").read_text().splitlines()[0]
    assert "\\" in first
    nus = load_split("nuswide", nus_root, "val")
    assert nus.paths[0] == str(nus_root / "Flickr" / first.replace("\\", "/"))


def test_nuswide_per_concept_label_files_read_like_the_combined_ones(tmp_path):
    combined = load_split("nuswide", make_tree("nuswide", tmp_path / "a"), "train")
    per_concept = load_split("nuswide", make_tree("nuswide", tmp_path / "b", per_concept=True), "train")
    assert torch.equal(combined.targets, per_concept.targets) and len(per_concept) == N_TRAIN - 1


@pytest.mark.parametrize(
    ("name", "inside"), [("coco2014", "COCO2014"), ("voc2007", "VOC2007"), ("nuswide", "nuswide"), ("vg500", "VG")]
)
def test_the_data_root_may_hold_the_dataset_folder(name, inside, tmp_path):
    make_tree(name, tmp_path / inside)  # VOC: the authors' <dataset_dir>/VOC2007/VOCdevkit/VOC2007
    report = check_layout(name, tmp_path)
    assert report.splits["val"].images == N_VAL


def test_the_data_root_may_be_the_vocdevkit_folder(tmp_path):
    make_tree("voc2012", tmp_path)
    report = check_layout("voc2012", tmp_path / "VOCdevkit")
    assert report.splits["train"].list_file.endswith(os.path.join("VOC2012", "ImageSets", "Main", "trainval.txt"))
    assert report.splits["val"].list_file.endswith(os.path.join("VOC2007", "ImageSets", "Main", "test.txt"))


def test_every_missing_folder_and_file_is_named_at_once(tmp_path):
    root = make_tree("coco2014", tmp_path / "coco")
    (root / "annotations" / "instances_train2014.json").unlink()
    break_tree("coco2014", root, "missing_folder")
    with pytest.raises(LayoutError) as info:
        check_layout("coco2014", root)
    message = str(info.value)
    assert "\n" not in message
    assert f"missing {root / 'annotations' / 'instances_train2014.json'} (COCO train annotations)" in message
    assert f"missing {root / 'val2014'}{os.sep} (COCO val images)" in message


def test_voc2012_says_which_year_is_missing(tmp_path):
    root = make_tree("voc2012", tmp_path / "voc")
    import shutil

    shutil.rmtree(root / "VOCdevkit" / "VOC2007")
    with pytest.raises(LayoutError, match="VOC2007 test images") as info:
        check_layout("voc2012", root)
    assert "VOC2012" not in str(info.value).split("expected")[0]
    assert len(load_split("voc2012", root, "train")) == N_TRAIN  # the training split is complete


def test_a_missing_data_root_is_named(tmp_path):
    with pytest.raises(LayoutError, match=f"vg500 data root {tmp_path / 'nope'} does not exist"):
        check_layout("vg500", tmp_path / "nope")
    with pytest.raises(LayoutError, match="unknown dataset layout 'coco2017'"):
        check_layout("coco2017", tmp_path)


BREAKS = [
    *((name, "missing_annotations") for name in LAYOUTS),
    *((name, "absent_image") for name in LAYOUTS),
    *((name, "missing_folder") for name in LAYOUTS),
    ("nuswide", "wrong_columns"),
    ("nuswide", "count_mismatch"),
    ("vg500", "bad_index"),
    ("vg500", "not_in_json"),
]


@pytest.mark.parametrize(("name", "how"), BREAKS)
def test_a_broken_tree_gives_one_line_naming_the_path(name, how, tmp_path):
    root = make_tree(name, tmp_path / name, n_train=8, n_val=6)
    needle = break_tree(name, root, how)
    for call in (lambda: check_layout(name, root), lambda: load_split(name, root, "val")):
        with pytest.raises(LayoutError) as info:
            call()
        assert needle in str(info.value) and "\n" not in str(info.value)
    if how == "count_mismatch":  # both files and both counts
        assert "TestImagelist.txt lists 6 images" in str(info.value)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")
def test_a_fifo_in_place_of_a_label_file_is_named_never_opened(tmp_path):
    root = make_tree("nuswide", tmp_path / "nus", n_train=4, n_val=3)
    labels = root / "Groundtruth" / "Labels_Test.txt"
    labels.unlink()
    os.mkfifo(labels)  # opening it would block forever
    with pytest.raises(LayoutError, match=f"missing {labels} \\(NUS-WIDE Test labels.*it is not a regular file\\)"):
        check_layout("nuswide", root)


def test_missing_images_policy(tmp_path):
    """Without skip_bad any missing listed image is an error; with it they are dropped and reported, unless more
    than half of a split is missing (the wrong folder or an unfinished download)."""
    root = make_tree("vg500", tmp_path / "vg", n_train=8, n_val=6)
    gone = break_tree("vg500", root, "absent_image")
    with pytest.raises(LayoutError, match="1 of the 6 vg500 val images .* are missing .*skip_bad=True"):
        check_layout("vg500", root)
    report = check_layout("vg500", root, skip_bad=True)
    assert report.splits["val"].missing == 1 and report.splits["val"].sample_problem == f"missing: {gone}"
    assert report.splits["val"].images == 5  # what the loader keeps
    with pytest.warns(UserWarning, match=f"dropped 1 missing or unreadable image.*e.g. {gone}"):
        ds = load_split("vg500", root, "val", skip_bad=True)
    assert len(ds) == 5 and gone not in ds.paths
    for path in sorted((root / "VG_100K").glob("23050*.jpg"))[1:4]:  # 4 of 6 missing now
        path.unlink()
    with pytest.raises(LayoutError, match="more than half"):
        load_split("vg500", root, "val", skip_bad=True)


def test_verify_images_counts_unreadable_ones(tmp_path):
    root = make_tree("voc2007", tmp_path / "voc", n_train=8, n_val=6)
    bad = root / "VOCdevkit" / "VOC2007" / "JPEGImages" / "000009.jpg"
    bad.write_bytes(b"not a jpeg at all")
    assert check_layout("voc2007", root).splits["val"].unreadable == 0  # not decoded without verify_images
    with pytest.raises(LayoutError, match=f"1 of the 6 voc2007 val images .* are unreadable .*{bad}"):
        check_layout("voc2007", root, verify_images=True)
    report = check_layout("voc2007", root, verify_images=True, skip_bad=True)
    assert report.splits["val"].unreadable == 1 and str(bad) in report.splits["val"].sample_problem


def test_names_from_files_never_leave_the_image_folder(tmp_path):
    root = make_tree("vg500", tmp_path / "vg", n_train=4, n_val=3)
    index = json.loads((root / "vg_category_500_labels_index.json").read_text())
    index["../../secret.jpg"] = [1]
    (root / "vg_category_500_labels_index.json").write_text(json.dumps(index))
    (root / "test_list_500.txt").write_text("../../secret.jpg\n")
    with pytest.raises(LayoutError, match=r"test_list_500.txt:1: image name '../../secret.jpg' is not a path inside"):
        load_split("vg500", root, "val")
    coco = make_tree("coco2014", tmp_path / "coco", n_train=4, n_val=3)
    doc = json.loads((coco / "annotations" / "instances_val2014.json").read_text())
    doc["images"][0]["file_name"] = "/etc/passwd"
    (coco / "annotations" / "instances_val2014.json").write_text(json.dumps(doc))
    with pytest.raises(LayoutError, match="instances_val2014.json image '/etc/passwd'"):
        load_split("coco2014", coco, "val")


def test_coco_categories_must_be_coco_2014s(tmp_path):
    root = make_tree("coco2014", tmp_path / "coco", n_train=4, n_val=3)
    path = root / "annotations" / "instances_val2014.json"
    doc = json.loads(path.read_text())
    doc["categories"][3]["name"] = "motorbike"
    path.write_text(json.dumps(doc))
    with pytest.raises(LayoutError, match="not COCO 2014's 80 in category-id order \\(label 3 is 'motorbike'"):
        load_split("coco2014", root, "val")


def test_dataspec_and_options_take_the_layouts(tmp_path):
    root = make_tree("nuswide", tmp_path / "nus", n_train=6, n_val=4)
    specs = data_specs({"data": str(root), "val_data": str(root), "data_format": "nuswide"})
    assert (specs["data"].split, specs["val_data"].split) == ("train", "val")
    assert len(build_dataset(specs["val_data"])) == 4 and len(build_dataset(DataSpec(root, "nuswide"))) == 5
    with pytest.raises(ValueError, match="no image folder may be given"):
        DataSpec(root, "nuswide", images=str(root))
    with pytest.raises(ValueError, match="must be train or val, got 'test'"):
        DataSpec(root, "nuswide", split="test")
    with pytest.raises(ValueError, match="no label-name file may be given"):
        DataSpec(root, "vg500", label_names="labels.txt")
    assert cli._LAYOUTS == LAYOUTS and cli._DATA_FORMATS == DATA_FORMATS  # the CLI's copies (fast startup)


# ----------------------------------------------------------------------------- the command line


def tiny_checkpoint(path: Path, label_set: str) -> Path:
    torch.manual_seed(0)
    model = sadcl.create_model("sadcl_tiny", label_names=list(read_labels(label_set))).eval()
    save_safetensors(export_state_dict(model), path, checkpoint_metadata(model))
    return path


@pytest.mark.parametrize(
    ("name", "how", "command"),
    [
        ("coco2014", "missing_annotations", "eval"),
        ("voc2007", "absent_image", "eval"),
        ("nuswide", "wrong_columns", "eval"),
        ("vg500", "missing_folder", "train"),
        ("voc2012", "missing_annotations", "train"),
    ],
)
def test_cli_broken_tree_exits_2_with_one_line(name, how, command, tmp_path, capsys):
    root = make_tree(name, tmp_path / "data", n_train=6, n_val=4)
    needle = break_tree(name, root, how)
    ckpt = tiny_checkpoint(tmp_path / "tiny.safetensors", LABEL_SETS[name])
    before = snapshot(tmp_path)
    common = ["--data-format", name, "--data-root", str(root), "--num-workers", "0"]
    if command == "eval":
        args = ["eval", *common, "--checkpoint", str(ckpt), "--output", str(tmp_path / "out" / "eval.json")]
    else:
        args = ["train", *common, "--val-data", str(root), "--checkpoint", str(ckpt), "--batch-size", "2"]
        args += ["--output", str(tmp_path / "run")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"sadcl {command}: error: ") and needle in err
    assert snapshot(tmp_path) == before


def test_cli_skip_bad_error_speaks_in_flags(tmp_path, capsys):
    root = make_tree("vg500", tmp_path / "vg", n_train=6, n_val=4)
    break_tree("vg500", root, "absent_image")
    ckpt = tiny_checkpoint(tmp_path / "tiny.safetensors", "vg500")
    args = ["eval", "--data-format", "vg500", "--data", str(root), "--checkpoint", str(ckpt), "--num-workers", "0"]
    assert main([*args, "--output", str(tmp_path / "e.json")]) == 2
    assert "drop them with --skip-bad" in capsys.readouterr().err


def test_train_and_eval_read_the_layouts_end_to_end(tmp_path, capsys):
    """`sadcl train` on a VOC 2007 tree (trainval, validated on test) with a tiny model, then `sadcl eval` of its
    weights, which reads the val split (VOC 2007 test) by default."""
    root = make_tree("voc2007", tmp_path / "voc", n_train=16, n_val=8)
    run = tmp_path / "run"
    model_args = ["--model-arg", "hidden_dim=32", "--model-arg", "ffn_dim=32", "--model-arg", "proj_dim=16"]
    args = ["train", "--data-format", "voc2007", "--data", str(root), "--val-data", str(root), "--model", "sadcl_tiny"]
    args += [*model_args, "--img-size", "32", "--epochs", "1", "--batch-size", "8", "--num-workers", "0"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([*args, "--output", str(run), "--no-progress"]) == 0
        assert "mAP raw" in capsys.readouterr().out
        report = tmp_path / "eval.json"
        eval_args = [
            "eval",
            "--data-format",
            "voc2007",
            "--data",
            str(root),
            "--checkpoint",
            str(run / "best.safetensors"),
        ]
        assert main([*eval_args, "--num-workers", "0", "--output", str(report)]) == 0
    results = json.loads(report.read_text())
    assert results["num_images"] == 8 and results["data"]["split"] == "val" and results["data"]["format"] == "voc2007"
