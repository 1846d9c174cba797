"""`sadcl reproduce`: the authors' settings per dataset, the dry-run plan and GPU estimate on fake trees of the five
layouts, one-line refusals, and the whole two-step reproduction on CPU (interrupted, resumed, evaluated, exported)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from fakelayouts import make_tree

import sadcl
from sadcl.cli import main
from sadcl.data.labels import read_labels
from sadcl.data.layouts import LAYOUTS, check_layout
from sadcl.reproduce.plan import estimate, resolve_plan, steps_per_epoch
from sadcl.reproduce.recipes import COMMON, DATASETS, MEASURED_STEP, RELEASE_SIZES, STEPS
from sadcl.train.checkpoint import export_weights, load_training_checkpoint
from sadcl.train.config import TrainConfig
from sadcl.zoo.header import WeightsHeader
from sadcl.zoo.safetensors_io import save_safetensors
from sadcl.zoo.variants import VARIANTS
from sadcl.zoo.weights import WeightsRecord, sha256_file

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "train_gpu.json"
N_TRAIN = 140  # two full batches of the paper's 64 (NUS-WIDE drops its one unlabelled image: still two)
TINY = ["--model", "sadcl_tiny", "--img-size", "64", "--batch-size", "8", "--num-workers", "0", "--device", "cpu"]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(folder.rglob("*"))}


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["reproduce", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def header_only_coco_model(path: Path) -> Path:
    """A file whose header describes the paper's COCO model (the weights are not needed to plan a VOC run)."""
    v = VARIANTS["sadcl_coco_448"]
    header = WeightsHeader(config={**v.constructor_args(), "num_classes": 80}, preprocessing=v.preprocessing)
    save_safetensors({"unused": torch.zeros(1)}, path, header.to_metadata())
    return path


def tiny_coco_model(path: Path, labels: str = "coco80") -> Path:
    """What `sadcl reproduce coco2014 --model sadcl_tiny` would leave: a tiny model with the 80 COCO labels."""
    torch.manual_seed(0)
    export_weights(sadcl.create_model("sadcl_tiny", label_names=list(read_labels(labels))), path)
    return path


# ----------------------------------------------------------------------------- the recipe table
def test_measured_step_is_the_benchmark_json():
    """The dry-run's figures are a copy of benchmarks/results/train_gpu.json (not installed): they must not drift."""
    bench = json.loads(BENCH.read_text())
    ours = bench["configs"]["ours"]
    assert MEASURED_STEP["file"] == "benchmarks/results/train_gpu.json"
    assert (MEASURED_STEP["date_utc"], MEASURED_STEP["gpu"]) == (bench["date_utc"], bench["device_name"])
    assert (MEASURED_STEP["model"], MEASURED_STEP["batch"]) == (bench["model"], bench["batch"])
    assert MEASURED_STEP["torch"] == bench["machine"]["torch"] and bench["compile"] is False
    assert MEASURED_STEP["img_size"] == VARIANTS[bench["model"]].img_size
    assert MEASURED_STEP["step_s"] == ours["time"]["median_s"]
    for key in ("images_per_s", "static_mib", "step_extra_peak_mib", "total_peak_mib"):
        assert MEASURED_STEP[key] == ours[key], key


def test_recipe_is_the_papers_and_every_setting_has_a_source():
    assert tuple(DATASETS) == LAYOUTS
    assert {n: d.variant for n, d in DATASETS.items()} == {
        "coco2014": "sadcl_coco_448",
        "voc2007": "sadcl_voc2007_448",
        "voc2012": "sadcl_voc2012_448",
        "nuswide": "sadcl_nuswide_448",
        "vg500": "sadcl_vg500_576",
    }
    assert [n for n, d in DATASETS.items() if d.init == "coco"] == ["voc2007", "voc2012"]
    settings = [*COMMON.values(), *STEPS["step1"].values(), *STEPS["step2"].values(), *RELEASE_SIZES.values()]
    assert all(s.source.strip() for s in settings)
    assert (STEPS["step1"]["gamma_neg"].value, STEPS["step2"]["gamma_neg"].value) == (4.0, 0.0)
    assert (COMMON["batch_size"].value, COMMON["epochs"].value, COMMON["patience"].value) == (64, 80, 8)
    for step in STEPS:  # each step's settings are valid TrainConfig keywords
        TrainConfig(**{k: s.value for k, s in {**COMMON, **STEPS[step]}.items()})


# ----------------------------------------------------------------------------- dry runs
@pytest.mark.parametrize("name", LAYOUTS)
def test_dry_run_prints_the_plan_and_writes_nothing(name, tmp_path, capsys):
    root = make_tree(name, tmp_path / "data", n_train=N_TRAIN)
    init = ["--init", header_only_coco_model(tmp_path / "coco.safetensors")] if name.startswith("voc") else []
    before = snapshot(tmp_path)
    code, out, err = run_cli(capsys, name, "--data-root", root, "--output", tmp_path / "run", "--dry-run", *init)
    assert code == 0, err
    assert snapshot(tmp_path) == before  # nothing written, not even the run folder

    plan = resolve_plan(name, root, init=init[1] if init else None)
    images = check_layout(name, root).splits["train"].images
    size = 576 if name == "vg500" else 448
    for step, gamma, objective in (("step1", 4.0, "asl"), ("step2", 0.0, "sadcl")):
        s = plan.steps[step]
        assert steps_per_epoch(plan, step) == images // 64 == 2  # drop_last, as the trainer does
        assert (s["img_size"], s["gamma_neg"], s["objective"], s["epochs"]) == (size, gamma, objective, 80)
        assert s["model"] == DATASETS[name].variant
    assert plan.differs == []
    if name.startswith("voc"):
        assert plan.init["sha256"] == sha256_file(init[1]) and "pretrained_backbone" not in plan.steps["step1"]
    else:
        assert plan.init is None and plan.steps["step1"]["pretrained_backbone"] is True
    assert f"produces {DATASETS[name].variant}" in out and "the paper's recipe (no setting overridden)" in out
    assert "2 steps/epoch" in out and "GPU estimate (one NVIDIA H100 80GB HBM3" in out
    assert "gamma_neg 0 (the script coco.sh says 4)" in out and "would start" in out


def test_dry_run_names_the_overrides_and_plans_with_release_counts(capsys):
    code, out, err = run_cli(capsys, "voc2007", "--dry-run", "--epochs", "20", "--batch-size", "32")
    assert code == 0, err
    assert "the image counts of the official release" in out and "train 5,011 images" in out
    assert "NOT the paper's recipe: --epochs 20 (paper: 80); --batch-size 32 (paper: 64)" in out
    assert "156 steps/epoch" in out  # 5011 // 32
    assert "training needs --init" in out


def test_estimate_scales_the_measured_rate():
    coco = resolve_plan("coco2014", None)
    assert steps_per_epoch(coco, "step1") == 1293  # the authors' logged iterations per epoch (REFERENCE e)
    e = estimate(coco)["steps"]["step2"]
    rate = MEASURED_STEP["images_per_s"]
    assert e["epoch_s"] == pytest.approx(1293 * 64 / rate + 2 * 40_504 / 3 / rate)
    assert (e["expected_epochs"], estimate(coco)["steps"]["step1"]["expected_epochs"]) == (21, 29)
    assert e["peak_gib"] == pytest.approx(
        (MEASURED_STEP["static_mib"] + 2 * MEASURED_STEP["step_extra_peak_mib"]) / 1024
    )
    vg = estimate(resolve_plan("vg500", None))["steps"]["step1"]
    assert vg["images_per_s"] == pytest.approx(rate * (448 / 576) ** 2)
    tiny = estimate(resolve_plan("coco2014", None, model="sadcl_tiny"))
    assert tiny["available"] is False and "sadcl_tiny" in tiny["why"]


# ----------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    "args, named",
    [
        (["voc2007"], "--init"),  # VOC starts from the COCO model
        (["coco2014", "--init", "{coco}"], "--init"),
        (["voc2007", "--init", "{voc}"], "80 COCO labels"),
        (["voc2007", "--init", "{tmp}/nope.safetensors"], "--init"),
        (["voc2007", "--init", "{coco}", "--no-pretrained-backbone"], "--no-pretrained-backbone"),
        (["coco2014", "--epochs", "0"], "--epochs"),
        (["coco2014", "--batch-size", "500"], "--batch-size"),
        (["coco2014", "--model", "sadcl_nope"], "--model"),
        (["coco2014", "--repo-id", "not a repo"], "--repo-id"),
        (["coco2014", "--stop-after-epochs", "0"], "--stop-after-epochs"),
        (["coco2014", "--output", "{data}"], "--output"),  # a folder reproduce did not write
        (["coco2014", "--data-root", "{tmp}/absent"], "absent"),
        (["coco2014", "--data-root", ""], "--data-root"),  # "": no --data-root (only a dry run may omit it)
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(args, named, tmp_path, capsys):
    data = make_tree("coco2014", tmp_path / "data", n_train=N_TRAIN)
    fill = {
        "{coco}": str(header_only_coco_model(tmp_path / "coco.safetensors")),
        "{voc}": str(tiny_coco_model(tmp_path / "voc.safetensors", labels="voc20")),
        "{data}": str(data),
    }
    args = [fill.get(a, a.replace("{tmp}", str(tmp_path))) for a in args]
    if "--data-root" not in args:
        args += ["--data-root", str(data)]
    if args[args.index("--data-root") + 1] == "":
        del args[args.index("--data-root") : args.index("--data-root") + 2]
    if "--output" not in args:
        args += ["--output", str(tmp_path / "run")]
    before = snapshot(tmp_path)
    code, out, err = run_cli(capsys, *args)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("sadcl reproduce: error: ") and named in err, err
    assert "Traceback" not in err
    assert snapshot(tmp_path) == before


def test_a_run_with_other_settings_is_refused_unless_overwrite(tmp_path, capsys):
    root = make_tree("nuswide", tmp_path / "data")
    run = tmp_path / "run"
    run.mkdir()
    plan = resolve_plan("nuswide", root, epochs=1, model="sadcl_tiny", batch_size=8)
    (run / "plan.json").write_text(json.dumps(plan.to_json(), default=str))
    before = snapshot(tmp_path)
    base = ["nuswide", "--data-root", root, "--output", run, "--model", "sadcl_tiny", "--batch-size", "8"]
    code, out, err = run_cli(capsys, *base, "--epochs", "2", "--dry-run")
    assert code == 2 and err.count("\n") == 1
    assert "step1.epochs (the run has 1, now 2)" in err and "--overwrite" in err and "--output" in err
    code, out, err = run_cli(
        capsys, *base, "--epochs", "1", "--dry-run", "--num-workers", "0"
    )  # run settings may change
    assert code == 0 and "would continue" in out, err
    code, out, err = run_cli(capsys, *base, "--epochs", "2", "--dry-run", "--overwrite")
    assert code == 0 and "would start over in" in out, err
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- the whole reproduction
@pytest.mark.slow
def test_reproduction_on_cpu_interrupted_resumed_evaluated_exported(tmp_path, capsys):
    """voc2007 from a tiny COCO model: step 1 stops after one of its two epochs, the rerun continues it (not from
    scratch), runs step 2, evaluates next to the paper's numbers, exports, prints the record and the push command."""
    root = make_tree("voc2007", tmp_path / "data")
    init = tiny_coco_model(tmp_path / "coco_tiny.safetensors")
    run = tmp_path / "run"
    (tmp_path / "run").mkdir()
    (run / "notes.txt").write_text("mine")  # a foreign file: --overwrite keeps it
    cmd = ["voc2007", "--data-root", root, "--output", run, "--init", init, "--epochs", "2", *TINY]
    cmd += ["--repo-id", "me/sadcl-voc", "--no-progress", "--overwrite"]

    code, out, err = run_cli(capsys, *cmd, "--stop-after-epochs", "1")
    assert code == 0, err
    assert "continue with step1" in out and not (run / "step2").exists() and not (run / "eval.json").exists()
    assert load_training_checkpoint(run / "step1" / "last.pt")["epoch"] == 1

    cmd.remove("--overwrite")  # the same command again continues where it stopped
    code, out, err = run_cli(capsys, *cmd)
    assert code == 0, err
    assert f"continuing {run / 'step1'} at epoch 1" in out
    starts = [json.loads(line) for line in (run / "step1" / "log.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["resumed"]) for r in starts if r["event"] == "start"] == [(0, False), (1, True)]
    assert load_training_checkpoint(run / "step2" / "last.pt")["epoch"] == 2
    assert (run / "notes.txt").read_text() == "mine"

    result = json.loads((run / "eval.json").read_text())
    assert result["variant"] == "sadcl_voc2007_448" and result["num_images"] == 12
    assert set(result["metrics"]) >= {"mAP", "CF1", "OF1", "CP_top3", "OF1_top3"}
    assert result["paper"]["metrics"] == {"mAP": 96.4}
    assert result["weights"]["sha256"] == sha256_file(run / "step2" / "best.safetensors")
    assert "paper        96.4 |     —" in out and "reproduced" in out

    model = sadcl.create_model(str(run / "export"))
    assert model.label_names == list(read_labels("voc20")) and model.config["img_size"] == 64
    config = json.loads((run / "export" / "config.json").read_text())
    assert config["sadcl"]["metrics"]["mAP"] == round(result["metrics"]["mAP"], 2)
    assert config["sadcl"]["metrics_source"].startswith("reproduced by sadcl reproduce on ")
    # --model sadcl_tiny makes sadcl_tiny weights (VOC labels, 64 px), so the record is sadcl_tiny's
    start = out.index('{\n  "sadcl_tiny"')
    record = json.loads(out[start : out.index("\n}\n", start) + 2])["sadcl_tiny"]
    WeightsRecord(**record)
    assert record["sha256"] == sha256_file(run / "export" / "model.safetensors") == config["sadcl"]["weights"]["sha256"]
    assert record["hf_hub_id"] == "me/sadcl-voc" and record["revision"] is None
    assert f"sadcl push {run / 'export'} me/sadcl-voc" in out

    # once done, a rerun trains nothing: both steps are skipped, their checkpoints untouched
    steps = {k: v for k, v in snapshot(run).items() if k.startswith("step")}
    code, out, err = run_cli(capsys, *cmd)
    assert code == 0, err
    assert "step1 (Query2Label baseline): already finished" in out and "step2 (SADCL): already finished" in out
    assert {k: v for k, v in snapshot(run).items() if k.startswith("step")} == steps
    assert math.isfinite(json.loads((run / "eval.json").read_text())["metrics"]["mAP"])


@pytest.mark.parametrize("kind", ["garbage", "fifo", "other_format"])
def test_a_plan_file_reproduce_did_not_write_makes_the_folder_foreign(kind, tmp_path, capsys):
    """plan.json is data: a FIFO is never opened (no hang), garbage or another format is not a plan."""
    root = make_tree("coco2014", tmp_path / "data")
    run = tmp_path / "run"
    run.mkdir()
    if kind == "fifo":
        os.mkfifo(run / "plan.json")
    else:
        text = "{not json" if kind == "garbage" else json.dumps({"format": "something-else", "compared": {}})
        (run / "plan.json").write_text(text)
    before = snapshot(tmp_path)
    code, out, err = run_cli(capsys, "coco2014", "--data-root", root, "--output", run, "--batch-size", "8", "--dry-run")
    assert code == 2 and err.count("\n") == 1
    assert f"--output {run} holds files sadcl reproduce did not write (plan.json)" in err and "--overwrite" in err
    assert snapshot(tmp_path) == before


def test_init_may_be_the_coco_export_folder(tmp_path, capsys):
    """--init takes what `sadcl reproduce coco2014` leaves in RUN/export (checked against its config.json)."""
    from sadcl.zoo.export import export_model

    root = make_tree("voc2012", tmp_path / "data")
    torch.manual_seed(0)
    export_model(sadcl.create_model("sadcl_tiny", label_names=list(read_labels("coco80"))), tmp_path / "export")
    plan = resolve_plan("voc2012", root, init=tmp_path / "export", model="sadcl_tiny", batch_size=8)
    assert plan.init["weights"] == str(tmp_path / "export" / "model.safetensors")
    assert plan.init["sha256"] == sha256_file(tmp_path / "export" / "model.safetensors")
    args = ["voc2012", "--data-root", root, "--init", tmp_path / "export", "--output", tmp_path / "run", "--dry-run"]
    code, out, err = run_cli(capsys, *args, "--model", "sadcl_tiny", "--batch-size", "8")
    assert code == 0 and "GPU estimate: not available" in out, err
    code, out, err = run_cli(capsys, *args)  # the paper's model is a ResNet-101: a tiny init does not fit it
    assert code == 2 and err.count("\n") == 1 and "--init" in err and "architecture of sadcl_voc2012_448" in err


def test_verify_images_finds_an_unreadable_image_before_any_work(tmp_path, capsys):
    root = make_tree("vg500", tmp_path / "data", n_train=N_TRAIN)
    victim = root / "VG_100K" / (root / "train_list_500.txt").read_text().split()[3]  # a listed image
    victim.write_bytes(b"not an image")
    args = ["vg500", "--data-root", root, "--output", tmp_path / "run", "--dry-run"]
    assert run_cli(capsys, *args)[0] == 0  # not decoded by default
    code, out, err = run_cli(capsys, *args, "--verify-images")
    assert code == 2 and err.count("\n") == 1 and "unreadable" in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_skip_bad_drops_missing_images_and_is_part_of_the_plan(tmp_path, capsys):
    """Copies of NUS-WIDE lack images (dead Flickr links): without --skip-bad one line names one; with it they are
    dropped, counted, and the choice is recorded so that a rerun without it is refused (other data)."""
    root = make_tree("nuswide", tmp_path / "data", n_train=N_TRAIN)
    listed = (root / "ImageList" / "TrainImagelist.txt").read_text().split()[5].replace("\\", "/")
    (root / "Flickr" / listed).unlink()
    args = ["nuswide", "--data-root", root, "--output", tmp_path / "run", *TINY, "--epochs", "1"]
    code, out, err = run_cli(capsys, *args, "--dry-run")
    assert code == 2 and err.count("\n") == 1 and "--skip-bad" in err and Path(listed).name in err, err

    full = check_layout("nuswide", root, skip_bad=True).splits["train"].images
    plan = resolve_plan("nuswide", root, skip_bad=True, **{"model": "sadcl_tiny", "batch_size": 8})
    assert plan.skip_bad and plan.counts["train"]["images"] == full and plan.compared()["skip_bad"] is True
    code, out, err = run_cli(capsys, *args, "--skip-bad", "--stop-after-epochs", "1", "--no-pretrained-backbone")
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "plan.json").read_text())["skip_bad"] is True
    code, out, err = run_cli(capsys, *args, "--no-pretrained-backbone")  # the same run without --skip-bad
    assert code == 2 and err.count("\n") == 1 and "--skip-bad" in err, err
