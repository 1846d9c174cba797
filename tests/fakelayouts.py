"""Small real trees of the paper's five datasets, in the layouts their users have on disk, and ways to break them.

``make_tree(name, root)`` writes JPEG files made from Fashion-MNIST mosaics (built from banded fake Fashion
items, so nothing outside the test suite is needed) with the annotation files of the real release: a COCO
instances JSON (category ids 1..90 with gaps, one image without annotations), VOC XML files (a difficult
object, an image whose only objects are difficult), NUS-WIDE list and label text files (backslash paths, one
image without any label) and the VG-500 lists and index JSON (one image with an empty label list). Each
mosaic's labels are its Fashion classes mapped onto ten of the dataset's labels (:data:`FASHION_TO_LABEL`), so
a tiny model can learn them. Every tree also holds one image file that no list names.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
from fakedata import write_banded_fashion

from sadcl.data.labels import read_labels
from sadcl.data.mosaic import ITEM, make_mosaics, mosaic_to_pil

# COCO 2014 category ids, in category-id order (index i of coco80 has id COCO_IDS[i]).
COCO_IDS: tuple[int, ...] = (
    *range(1, 12),
    *range(13, 26),
    27,
    28,
    *range(31, 45),
    *range(46, 66),
    67,
    70,
    *range(72, 83),
    *range(84, 91),
)
assert len(COCO_IDS) == 80

# Fashion class k -> index of the dataset label it becomes.
FASHION_TO_LABEL: dict[str, tuple[int, ...]] = {
    "coco2014": (0, 1, 2, 15, 16, 39, 56, 62, 73, 41),
    "voc2007": (14, 1, 6, 7, 11, 4, 8, 19, 2, 5),
    "voc2012": (14, 1, 6, 7, 11, 4, 8, 19, 2, 5),
    "nuswide": (1, 2, 8, 13, 24, 30, 42, 55, 72, 75),
    "vg500": (0, 7, 42, 99, 123, 250, 314, 400, 451, 499),
}
_LABEL_SET = {"coco2014": "coco80", "voc2007": "voc20", "voc2012": "voc20", "nuswide": "nuswide81", "vg500": "vg500"}
VOC_DIFFICULT = "sheep"  # a class no Fashion item maps to: only ever a difficult object


def _mosaics(n_train: int, n_val: int, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``{"train": (images [n, 56, 56], fashion targets [n, 10], items [n, 4]), "val": ...}`` from banded fake
    Fashion items (item ``j`` of the fake split has class ``j % 10``)."""
    with tempfile.TemporaryDirectory() as tmp:
        write_banded_fashion(Path(tmp), 60, 30)
        return {
            "train": make_mosaics("train", n_train, seed, root=tmp),
            "val": make_mosaics("test", n_val, seed + 1, root=tmp),
        }


def expected_targets(name: str, fashion: np.ndarray) -> np.ndarray:
    """The dataset targets ``[n, C]`` of mosaics with Fashion targets ``fashion [n, 10]``."""
    out = np.zeros((len(fashion), len(read_labels(_LABEL_SET[name]))), dtype=np.float32)
    for k, index in enumerate(FASHION_TO_LABEL[name]):
        out[:, index] = np.maximum(out[:, index], fashion[:, k])
    return out


def _save(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    mosaic_to_pil(image).save(path, format="JPEG", quality=95)


def _cells(items: np.ndarray) -> list[tuple[tuple[int, int, int, int], int]]:
    """((x0, y0, x1, y1), Fashion class) of each filled cell of a mosaic whose cells hold ``items [4]``."""
    return [
        ((k % 2 * ITEM, k // 2 * ITEM, (k % 2 + 1) * ITEM, (k // 2 + 1) * ITEM), int(j) % 10)
        for k, j in enumerate(items)
        if j >= 0
    ]


def _labels_of(name: str, fashion_row: np.ndarray) -> list[int]:
    return sorted({FASHION_TO_LABEL[name][k] for k in np.flatnonzero(fashion_row)})


def _unlisted(folder: Path, images: np.ndarray) -> None:
    _save(images[0], folder / "unlisted_extra.jpg")


# ----------------------------------------------------------------------------- COCO 2014


def _coco(root: Path, data: dict) -> None:
    names = read_labels("coco80")
    categories = [{"id": i, "name": n, "supercategory": "thing"} for i, n in zip(COCO_IDS, names)]
    ann_id = 1
    for split, (images, _, items) in data.items():
        folder = root / f"{split}2014"
        entries, annotations = [], []
        for i, (image, cells) in enumerate(zip(images, items)):
            image_id = 9 + 7 * i + (100000 if split == "val" else 0)
            file_name = f"COCO_{split}2014_{image_id:012d}.jpg"
            if split == "train" and i == 0:  # an image without any annotation: an all-negative row
                image = np.zeros_like(image)
            else:
                for (x0, y0, x1, y1), k in _cells(cells):
                    category = COCO_IDS[FASHION_TO_LABEL["coco2014"][k]]
                    annotations.append(
                        {
                            "id": ann_id,
                            "image_id": image_id,
                            "category_id": category,
                            "iscrowd": 0,
                            "bbox": [x0, y0, x1 - x0, y1 - y0],
                            "area": float((x1 - x0) * (y1 - y0)),
                            "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]],
                        }
                    )
                    ann_id += 1
            _save(image, folder / file_name)
            entries.append({"id": image_id, "file_name": file_name, "width": 2 * ITEM, "height": 2 * ITEM})
        entries.reverse()  # the JSON's order is not the id order: the loader sorts by id
        doc = {
            "info": {"description": "fake COCO 2014"},
            "images": entries,
            "annotations": annotations,
            "categories": categories,
        }
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"instances_{split}2014.json").write_text(json.dumps(doc))
    _unlisted(root / "train2014", data["train"][0])


# ----------------------------------------------------------------------------- Pascal VOC


def _voc_xml(folder: str, image_id: str, objects: list[tuple[str, tuple[int, int, int, int], int]]) -> str:
    parts = [
        f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>{flag}</difficult><bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for name, (x0, y0, x1, y1), flag in objects
    ]
    return (
        f"<annotation><folder>{folder}</folder><filename>{image_id}.jpg</filename>"
        f"<size><width>{2 * ITEM}</width><height>{2 * ITEM}</height><depth>3</depth></size>"
        f"<segmented>0</segmented>{''.join(parts)}</annotation>\n"
    )


def _voc_split(base: Path, list_name: str, ids: list[str], images: np.ndarray, items: np.ndarray) -> None:
    names = read_labels("voc20")
    for folder in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (base / folder).mkdir(parents=True, exist_ok=True)
    for i, (image_id, image, cells) in enumerate(zip(ids, images, items)):
        # Only difficult objects in the second training image: an all-negative row.
        flag = int(list_name == "trainval" and i == 1)
        objects = [(names[FASHION_TO_LABEL["voc2007"][k]], box, flag) for box, k in _cells(cells)]
        if i == 0:  # a difficult object of a class no item maps to: ignored, so no such label
            objects.append((VOC_DIFFICULT, (0, 0, 2 * ITEM, 2 * ITEM), 1))
        _save(image, base / "JPEGImages" / f"{image_id}.jpg")
        (base / "Annotations" / f"{image_id}.xml").write_text(_voc_xml(base.name, image_id, objects))
    (base / "ImageSets" / "Main" / f"{list_name}.txt").write_text("".join(f"{i}\n" for i in ids))


def _voc(root: Path, data: dict, year_train: str) -> None:
    n_train, n_val = len(data["train"][0]), len(data["val"][0])
    train_ids = [f"{i + 1:06d}" if year_train == "2007" else f"2008_{i + 1:06d}" for i in range(n_train)]
    val_ids = [f"{n_train + i + 1:06d}" for i in range(n_val)]
    train_base = root / "VOCdevkit" / f"VOC{year_train}"
    _voc_split(train_base, "trainval", train_ids, data["train"][0], data["train"][2])
    _voc_split(root / "VOCdevkit" / "VOC2007", "test", val_ids, data["val"][0], data["val"][2])
    _unlisted(train_base / "JPEGImages", data["train"][0])


# ----------------------------------------------------------------------------- NUS-WIDE


def _nuswide(root: Path, data: dict, per_concept: bool) -> None:
    concepts = read_labels("nuswide81")
    for split, (images, fashion, _) in data.items():
        word = "Train" if split == "train" else "Test"
        targets = expected_targets("nuswide", fashion).astype(np.uint8)
        if split == "train":
            targets[0] = 0  # an image without any label: the authors drop it
        lines = []
        for i, (image, row) in enumerate(zip(images, targets)):
            folder = concepts[int(np.flatnonzero(row)[0])] if row.any() else "misc"
            rel = f"{folder}\\{i + 1:04d}_{2124494179 + i + (500 if split == 'val' else 0)}.jpg"
            _save(image, root / "Flickr" / rel.replace("\\", "/"))
            lines.append(rel)
        (root / "ImageList").mkdir(parents=True, exist_ok=True)
        (root / "ImageList" / f"{word}Imagelist.txt").write_text("".join(f"{line}\r\n" for line in lines))
        ground = root / "Groundtruth"
        if per_concept:
            (ground / "TrainTestLabels").mkdir(parents=True, exist_ok=True)
            for c, concept in enumerate(concepts):
                text = "".join(f"{int(v)}\n" for v in targets[:, c])
                (ground / "TrainTestLabels" / f"Labels_{concept}_{word}.txt").write_text(text)
        else:
            ground.mkdir(parents=True, exist_ok=True)
            (ground / f"Labels_{word}.txt").write_text("".join(" ".join(map(str, r)) + "\n" for r in targets))
    _unlisted(root / "Flickr" / "misc", data["train"][0])


# ----------------------------------------------------------------------------- VG-500


def _vg500(root: Path, data: dict) -> None:
    index = {}
    for split, (images, fashion, _) in data.items():
        names = []
        for i, (image, row) in enumerate(zip(images, fashion)):
            name = f"{2300000 + i + (5000 if split == 'val' else 0)}.jpg"
            empty = split == "train" and i == 0  # an image with an empty label list: an all-negative row
            _save(np.zeros_like(image) if empty else image, root / "VG_100K" / name)
            index[name] = [] if empty else _labels_of("vg500", row)
            names.append(name)
        list_name = "train_list_500.txt" if split == "train" else "test_list_500.txt"
        (root / list_name).write_text("".join(f"{n}\n" for n in names))
    (root / "vg_category_500_labels_index.json").write_text(json.dumps(index))
    _unlisted(root / "VG_100K", data["train"][0])


def make_tree(
    name: str, root: Path, n_train: int = 24, n_val: int = 12, seed: int = 0, *, per_concept: bool = False
) -> Path:
    """Write a small real ``name`` tree under ``root``; returns the data root (``root``). NUS-WIDE labels come in
    the combined ``Labels_{Train,Test}.txt`` files, or with ``per_concept=True`` one file per concept."""
    root = Path(root)
    data = _mosaics(n_train, n_val, seed)
    if name == "coco2014":
        _coco(root, data)
    elif name in ("voc2007", "voc2012"):
        _voc(root, data, name[3:])
    elif name == "nuswide":
        _nuswide(root, data, per_concept)
    elif name == "vg500":
        _vg500(root, data)
    else:
        raise ValueError(f"unknown layout {name!r}")
    return root


def fashion_targets(n_train: int = 24, n_val: int = 12, seed: int = 0) -> dict[str, np.ndarray]:
    """The Fashion targets ``[n, 10]`` of the mosaics ``make_tree`` draws with the same arguments."""
    return {split: fashion for split, (_, fashion, _) in _mosaics(n_train, n_val, seed).items()}


# ----------------------------------------------------------------------------- broken trees

BREAKS = (
    "missing_annotations",
    "absent_image",
    "missing_folder",
    "wrong_columns",
    "count_mismatch",
    "bad_index",
    "not_in_json",
)


def _val_list(name: str, root: Path) -> Path:
    return {
        "coco2014": root / "annotations" / "instances_val2014.json",
        "voc2007": root / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main" / "test.txt",
        "voc2012": root / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main" / "test.txt",
        "nuswide": root / "ImageList" / "TestImagelist.txt",
        "vg500": root / "test_list_500.txt",
    }[name]


def _first_val_image(name: str, root: Path) -> Path:
    if name == "coco2014":
        images = json.loads(_val_list(name, root).read_text())["images"]
        return root / "val2014" / min(images, key=lambda im: im["id"])["file_name"]
    first = _val_list(name, root).read_text().split()[0]
    if name.startswith("voc"):
        return root / "VOCdevkit" / "VOC2007" / "JPEGImages" / f"{first}.jpg"
    if name == "nuswide":
        return root / "Flickr" / first.replace("\\", "/")
    return root / "VG_100K" / first


def break_tree(name: str, root: Path, how: str) -> str:
    """Break a tree ``make_tree(name, root)`` wrote, in way ``how`` (:data:`BREAKS`); returns the text the one-line
    error must contain (the path it names, or ``file:line``)."""
    root = Path(root)
    if how == "missing_annotations":  # the validation split's annotation / label file
        target = {
            "coco2014": root / "annotations" / "instances_val2014.json",
            "nuswide": root / "Groundtruth" / "Labels_Test.txt",
            "vg500": root / "vg_category_500_labels_index.json",
        }.get(name)
        if target is None:  # VOC: the XML of one listed test image
            first = _val_list(name, root).read_text().split()[0]
            target = root / "VOCdevkit" / "VOC2007" / "Annotations" / f"{first}.xml"
        target.unlink()
        return str(target)
    if how == "absent_image":  # the list names an image that is not on disk
        target = _first_val_image(name, root)
        target.unlink()
        return str(target)
    if how == "missing_folder":
        target = {
            "coco2014": root / "val2014",
            "voc2007": root / "VOCdevkit" / "VOC2007" / "JPEGImages",
            "voc2012": root / "VOCdevkit" / "VOC2007" / "JPEGImages",
            "nuswide": root / "Flickr",
            "vg500": root / "VG_100K",
        }[name]
        shutil.rmtree(target)
        return str(target)
    if name == "nuswide" and how in ("wrong_columns", "count_mismatch"):
        labels = root / "Groundtruth" / "Labels_Test.txt"
        lines = labels.read_text().splitlines()
        if how == "wrong_columns":
            lines[2] = " ".join(lines[2].split()[:80])
            labels.write_text("".join(f"{line}\n" for line in lines))
            return f"{labels}:3"
        labels.write_text("".join(f"{line}\n" for line in lines[:-1]))
        return f"{labels} has {len(lines) - 1} label lines"
    if name == "vg500" and how in ("bad_index", "not_in_json"):
        index_file = root / "vg_category_500_labels_index.json"
        index = json.loads(index_file.read_text())
        first = _val_list(name, root).read_text().split()[0]
        if how == "bad_index":
            index[first] = [3, 500]
            index_file.write_text(json.dumps(index))
            return f"{index_file}: entry '{first}' has label 500"
        del index[first]
        index_file.write_text(json.dumps(index))
        return f"{_val_list(name, root)}:1: image '{first}'"
    raise ValueError(f"break {how!r} does not apply to {name}")
