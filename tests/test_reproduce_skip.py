"""`sadcl reproduce --skip-bad`: which listed images are dropped is decided once (every image decoded at the layout
check), recorded in plan.json, and reused by both steps, the evaluation and a rerun, with the same images in the
same order as `MultiLabelDataset(skip_bad=True)` keeps them."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from fakelayouts import make_tree
from test_reproduce import TINY, run_cli, snapshot

import sadcl.data.datasets as datasets_module
import sadcl.data.layouts as layouts
import sadcl.train.data as train_data
from sadcl.data.layouts import LayoutError, check_layout, decided, load_split
from sadcl.reproduce.plan import resolve_plan


def coco_images(root: Path, split: str) -> list[Path]:
    """The images ``make_tree("coco2014", root)`` lists for ``split``, in load order (by image id)."""
    return sorted((root / f"{split}2014").glob(f"COCO_{split}2014_*.jpg"))


def broken_coco(tmp_path: Path, n_train: int = 24, n_val: int = 12) -> tuple[Path, dict[str, list[str]]]:
    """A COCO tree with a missing and a corrupt listed training image and a corrupt validation image; returns the
    root and the names that must be dropped, per split, as plan.json records them (sorted)."""
    root = make_tree("coco2014", tmp_path / "data", n_train=n_train, n_val=n_val)
    train, val = coco_images(root, "train"), coco_images(root, "val")
    train[3].unlink()
    train[7].write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    val[2].write_bytes(b"garbage")
    return root, {"train": sorted([train[3].name, train[7].name]), "val": [val[2].name]}


class Calls:
    """A thread-safe call counter around an image check (the layout check decodes in threads)."""

    def __init__(self, check):
        self.check, self.paths, self.lock = check, [], threading.Lock()

    def __call__(self, path):
        with self.lock:
            self.paths.append(str(path))
        return self.check(path)


@pytest.fixture
def decoding(monkeypatch):
    """Counts every per-image check: the layout check's (``layouts.check_image``) and the dataset's own
    ``skip_bad`` pass (``datasets.check_image``, the one this change avoids)."""
    calls = {"layout": Calls(layouts.check_image), "dataset": Calls(datasets_module.check_image)}
    monkeypatch.setattr(layouts, "check_image", calls["layout"])
    monkeypatch.setattr(datasets_module, "check_image", calls["dataset"])
    return calls


@pytest.fixture
def built(monkeypatch):
    """Every split built by the trainer (through a DataSpec) or the evaluation: (split, its image paths)."""
    out: list[tuple[str, list[str]]] = []
    original = layouts.load_split

    def spy(name, root, split, *args, **kwargs):
        dataset = original(name, root, split, *args, **kwargs)
        out.append((split, list(dataset.paths)))
        return dataset

    monkeypatch.setattr(train_data, "load_split", spy)
    monkeypatch.setattr(layouts, "load_split", spy)
    return out


def test_skip_bad_decides_once_and_every_step_and_the_evaluation_reuse_it(tmp_path, capsys, decoding, built):
    root, dropped = broken_coco(tmp_path)
    run = tmp_path / "run"
    cmd = ["coco2014", "--data-root", root, "--output", run, *TINY, "--epochs", "1", "--skip-bad"]
    cmd += ["--no-pretrained-backbone", "--no-progress"]
    listed = {s: [str(p) for p in coco_images(root, s)] for s in ("train", "val")}
    listed["train"].insert(3, str(root / "train2014" / dropped["train"][0]))  # the deleted one, still listed
    kept = {s: [p for p in paths if Path(p).name not in dropped[s]] for s, paths in listed.items()}

    code, out, err = run_cli(capsys, *cmd, "--stop-after-epochs", "1")  # step 1, then stop
    assert code == 0, err
    # decoded once, at the layout check: each present listed image one time, none by a dataset
    present = sorted(p for s in listed for p in listed[s] if Path(p).exists())
    assert sorted(decoding["layout"].paths) == present
    assert decoding["dataset"].paths == []
    plan = json.loads((run / "plan.json").read_text())
    assert plan["dropped"] == dropped and plan["counts"]["train"]["images"] == 22
    assert "train: 1 listed images missing, 1 unreadable" in out
    assert built == [("train", kept["train"]), ("val", kept["val"])]  # the same images, in list order

    decoding["layout"].paths.clear()
    built.clear()
    code, out, err = run_cli(capsys, *cmd)  # the rerun: the record is reused, nothing decoded
    assert code == 0, err
    assert decoding["layout"].paths == [] and decoding["dataset"].paths == []
    assert "train: 1 listed images missing, 1 unreadable (as recorded)" in out
    assert [s for s, _ in built] == ["train", "val", "val"] and all(p == kept[s] for s, p in built), built
    assert json.loads((run / "eval.json").read_text())["num_images"] == 11
    assert json.loads((run / "plan.json").read_text())["dropped"] == dropped

    plan.pop("dropped")  # a run started before the decision was recorded: decided (once) and recorded now
    (run / "plan.json").write_text(json.dumps(plan))
    code, out, err = run_cli(capsys, *cmd)
    assert code == 0 and "already finished" in out, err
    assert sorted(decoding["layout"].paths) == present and decoding["dataset"].paths == []
    assert json.loads((run / "plan.json").read_text())["dropped"] == dropped


def test_a_decided_split_is_the_split_skip_bad_keeps(tmp_path, decoding):
    """The recorded decision gives the same images, targets and order as decoding them all (the old way)."""
    root, dropped = broken_coco(tmp_path, n_train=12, n_val=6)
    report = check_layout("coco2014", root, verify_images=True, skip_bad=True)
    assert {s: r.dropped for s, r in report.splits.items()} == dropped
    with pytest.warns(UserWarning, match="dropped 2 missing or unreadable"):
        old = load_split("coco2014", root, "train", skip_bad=True)
    decoding["layout"].paths.clear()
    decoding["dataset"].paths.clear()
    with pytest.warns(UserWarning, match="dropped 2 missing or unreadable"):
        new = load_split("coco2014", root, "train", skip_bad=True, dropped=dropped["train"])
    assert decoding["layout"].paths == [] and decoding["dataset"].paths == []
    assert new.paths == old.paths and len(new) == 10 and sorted(new.skipped) == sorted(old.skipped)
    assert np.array_equal(new.targets.numpy(), old.targets.numpy())
    with decided("coco2014", str(root) + "/", dropped), pytest.warns(UserWarning, match="dropped 2"):
        assert load_split("coco2014", root, "train", skip_bad=True).paths == old.paths  # a DataSpec's way
    assert decoding["dataset"].paths == []
    assert layouts._DECIDED == {}  # the block leaves nothing behind


def test_a_decision_that_does_not_fit_the_data_is_refused(tmp_path):
    root, dropped = broken_coco(tmp_path, n_train=12, n_val=6)
    with pytest.raises(LayoutError, match="'COCO_train2014_nope.jpg', recorded as an image to drop .* other data"):
        load_split("coco2014", root, "train", dropped=[*dropped["train"], "COCO_train2014_nope.jpg"])
    gone = coco_images(root, "train")[0]
    gone.unlink()  # missing now, but not when the decision was made
    with pytest.raises(LayoutError, match=f"1 of the coco2014 train images .* missing \\(e.g. {gone}\\) but were"):
        load_split("coco2014", root, "train", skip_bad=True, dropped=dropped["train"])


@pytest.mark.parametrize(
    "record, named",
    [
        ({"train": ["../../etc/passwd"]}, "image name '../../etc/passwd'"),
        ({"train": ["/etc/passwd"]}, "image name '/etc/passwd'"),
        ({"train": "COCO_train2014_x.jpg"}, "not split -> list of image names"),
        ({"test": []}, "not split -> list of image names"),
        ({"train": ["COCO_train2014_000000999999.jpg"]}, "is not listed in"),  # a name no list has: other data
    ],
)
def test_a_bad_record_in_plan_json_is_one_line_and_changes_nothing(record, named, tmp_path, capsys, decoding):
    """The record is data: checked, compared with the listed names, never opened; a bad one is refused."""
    root, _ = broken_coco(tmp_path, n_train=12, n_val=6)
    run = tmp_path / "run"
    args = ["coco2014", "--data-root", root, "--output", run, *TINY, "--epochs", "1", "--skip-bad"]
    assert run_cli(capsys, *args, "--dry-run", "--verify-images")[0] == 0
    plan = resolve_plan("coco2014", root, skip_bad=True, verify_images=True, **_tiny())
    run.mkdir()
    (run / "plan.json").write_text(json.dumps({**plan.to_json(), "dropped": record}))
    decoding["layout"].paths.clear()
    before = snapshot(tmp_path)
    code, out, err = run_cli(capsys, *args)
    assert code == 2 and err.count("\n") == 1 and err.startswith("sadcl reproduce: error: --output"), err
    assert named in err and "--overwrite" in err and "plan.json" in err, err
    assert decoding["layout"].paths == []  # refused before any image was decoded
    assert snapshot(tmp_path) == before


def _tiny() -> dict:
    return {"model": "sadcl_tiny", "img_size": 64, "batch_size": 8, "num_workers": 0, "device": "cpu", "epochs": 1}


def test_a_rerun_on_data_that_lost_an_image_since_the_record_is_refused(tmp_path, capsys, decoding):
    root, dropped = broken_coco(tmp_path, n_train=12, n_val=6)
    run = tmp_path / "run"
    plan = resolve_plan("coco2014", root, skip_bad=True, verify_images=True, **_tiny())
    assert plan.dropped == dropped and plan.counts["train"]["images"] == 10
    run.mkdir()
    (run / "plan.json").write_text(json.dumps(plan.to_json()))
    coco_images(root, "train")[0].unlink()  # gone since the decision
    decoding["layout"].paths.clear()
    before = snapshot(tmp_path)
    args = ["coco2014", "--data-root", root, "--output", run, *TINY, "--epochs", "1", "--skip-bad", "--dry-run"]
    code, out, err = run_cli(capsys, *args)
    assert code == 2 and err.count("\n") == 1 and "train images (the run has 10, now 9)" in err, err
    assert decoding["layout"].paths == [] and snapshot(tmp_path) == before


def test_more_than_half_unreadable_is_the_wrong_folder_even_with_skip_bad(tmp_path):
    root = make_tree("coco2014", tmp_path / "data", n_train=8, n_val=6)
    for path in coco_images(root, "val")[:4]:
        path.write_bytes(b"garbage")
    with pytest.raises(LayoutError, match="4 of the 6 coco2014 val images .* are unreadable .* more than half"):
        check_layout("coco2014", root, verify_images=True, skip_bad=True)


def test_a_run_without_skip_bad_refuses_it_before_decoding(tmp_path, capsys, decoding):
    root = make_tree("coco2014", tmp_path / "data", n_train=12, n_val=6)
    run = tmp_path / "run"
    run.mkdir()
    (run / "plan.json").write_text(json.dumps(resolve_plan("coco2014", root, **_tiny()).to_json()))
    before = snapshot(tmp_path)
    code, out, err = run_cli(
        capsys, "coco2014", "--data-root", root, "--output", run, *TINY, "--epochs", "1", "--skip-bad"
    )
    assert code == 2 and err.count("\n") == 1 and "skip_bad (the run has False, now True)" in err, err
    assert decoding["layout"].paths == [] and snapshot(tmp_path) == before
