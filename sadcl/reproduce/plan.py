"""The resolved plan of a reproduction (both steps' settings, the data's counts, which settings differ from the
paper) and the dry-run's estimate of GPU time and memory from the measured training-step rate."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..data.labels import read_labels
from ..train.config import ConfigError, check_numbers, cli_flag
from ..zoo.variants import VARIANTS, check_name
from .recipes import (
    AUTHORS_EPOCHS,
    COMMON,
    DATASETS,
    EVAL_FORWARD_SHARE,
    MEASURED_STEP,
    OVERRIDES,
    RELEASE_SIZES,
    RUN_SETTINGS,
    STEPS,
)

__all__ = [
    "PLAN_FORMAT",
    "Plan",
    "describe_override",
    "differences",
    "estimate",
    "flag",
    "format_estimate",
    "format_plan",
    "resolve_plan",
    "run_folder",
    "steps_per_epoch",
]

PLAN_FORMAT = "sadcl-reproduce-plan"
PLAN_VERSION = 1
_FLAGS = {"pretrained_backbone": "--no-pretrained-backbone", "data_root": "--data-root", "init": "--init"}


def flag(key: str) -> str:
    """The ``sadcl reproduce`` flag of a setting (``batch_size`` → ``--batch-size``)."""
    return _FLAGS.get(key) or cli_flag(key)


@dataclass
class Plan:
    """Everything a reproduction will do. ``steps`` holds each step's recipe settings (TrainConfig keywords plus
    ``start``, where the step's weights come from); ``differs`` the settings given that are not the paper's."""

    dataset: str
    variant: str
    data_root: str | None  # None: a dry run with the official release's image counts
    output_dir: str
    steps: dict[str, dict[str, Any]]
    counts: dict[str, dict[str, int]]  # split -> images, labels, positives
    differs: list[dict[str, Any]] = field(default_factory=list)
    init: dict[str, Any] | None = None  # the COCO model VOC starts from: path, weights file, sha256
    run: dict[str, Any] = field(default_factory=dict)  # num_workers, device: where and how fast, not what
    notes: list[str] = field(default_factory=list)
    layout: list[str] = field(default_factory=list)  # the layout check's report, as printed
    skip_bad: bool = False  # listed images missing or unreadable are dropped (and counted), not an error
    # With skip_bad: the images dropped, per split, relative to the split's image folder, sorted; decided once
    # (every image decoded) and reused by both steps, the evaluation and a rerun. None: not decided here.
    dropped: dict[str, list[str]] | None = None

    def to_json(self) -> dict[str, Any]:
        """``plan.json``: the plan and, under ``compared``, what a rerun must keep."""
        return {"format": PLAN_FORMAT, "format_version": PLAN_VERSION, **asdict(self), "compared": self.compared()}

    def compared(self) -> dict[str, Any]:
        """The settings a resumed run must keep: dataset, variant, both steps, the data's counts, the init's
        sha256 (the data root, the run folder, workers and device may change)."""
        out: dict[str, Any] = {"dataset": self.dataset, "variant": self.variant}
        out["init sha256"] = None if self.init is None else self.init["sha256"]
        out["skip_bad"] = self.skip_bad  # it decides which images are the data
        for step, settings in self.steps.items():
            out.update({f"{step}.{k}": v for k, v in settings.items() if k != "checkpoint"})
        for split, counts in self.counts.items():
            out.update({f"{split} {k}": v for k, v in counts.items()})
        return out


def describe_override(d: Mapping[str, Any]) -> str:
    """One entry of :attr:`Plan.differs` in words: ``--epochs 20 (paper: 80)``, ``--no-pretrained-backbone``."""
    if isinstance(d["given"], bool):
        return d["setting"]
    return f"{d['setting']} {d['given']} (paper: {d['paper']})"


def _normal(value: Any) -> Any:
    return [_normal(v) for v in value] if isinstance(value, (list, tuple)) else value


def differences(stored: Mapping[str, Any], plan: Plan) -> list[str]:
    """The settings of ``plan`` that differ from a stored plan's ``compared()`` (empty when they all agree)."""
    now = plan.compared()
    keys = list(now) + [k for k in stored if k not in now]
    return [
        f"{k} (the run has {stored.get(k)!r}, now {now.get(k)!r})"
        for k in keys
        if _normal(stored.get(k)) != _normal(now.get(k))
    ]


# ----------------------------------------------------------------------------- resolving
def _init_model(init: str | os.PathLike, model: str) -> dict[str, Any]:
    """The COCO model a VOC reproduction starts from: an export folder or a sadcl ``.safetensors`` file with
    the 80 COCO labels and ``model``'s architecture. Read locally (header only), never downloaded."""
    from ..zoo.export import read_export
    from ..zoo.header import ARCHITECTURE_KEYS, parse_header
    from ..zoo.safetensors_io import read_safetensors_metadata
    from ..zoo.weights import sha256_file

    path = Path(init).expanduser()
    use = "give the COCO model `sadcl reproduce coco2014` wrote (RUN/export or RUN/step2/best.safetensors)"
    if not path.exists():
        raise ConfigError(
            f"init {path}: no such file or folder; {use}", f"--init {path}: no such file or folder; {use}"
        )
    try:
        if path.is_dir():
            export = read_export(path)  # verifies the weights' sha256 against config.json
            config, weights = export.config, export.weights_path
        else:
            header = parse_header(read_safetensors_metadata(path), str(path))
            if header is None:
                raise ValueError("the file does not describe itself (no sadcl header)")
            config, weights = header.config, path
    except (ValueError, OSError, RuntimeError) as e:
        raise ConfigError(f"init {path}: {e}", f"--init {path}: {e}; {use}") from None
    labels, coco = list(config.get("label_names") or []), list(read_labels("coco80"))
    if labels != coco:
        problem = f"has {len(labels)} labels ({', '.join(labels[:3])}...), not the 80 COCO labels; {use}"
        raise ConfigError(f"init {path} {problem}", f"--init {path} {problem}")
    arch = VARIANTS[model].arch
    differ = [k for k in ARCHITECTURE_KEYS if config.get(k) != arch.get(k)]
    if differ:
        problem = (
            f"is not the architecture of {model} (differs in {', '.join(differ)}: {config.get(differ[0])!r} "
            f"vs {arch.get(differ[0])!r}); give the --model it was trained as"
        )
        raise ConfigError(f"init {path} {problem}", f"--init {path} {problem}")
    return {"path": os.fspath(path), "weights": os.fspath(weights), "sha256": sha256_file(weights)}


def _check_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(given) - set(OVERRIDES) - set(RUN_SETTINGS))
    if unknown:
        raise TypeError(f"unknown reproduce setting(s) {unknown}; valid: {', '.join(OVERRIDES + RUN_SETTINGS)}")
    check_numbers(
        {k: v for k, v in given.items() if k in ("epochs", "batch_size", "img_size", "patience", "num_workers")}
    )
    if "model" in given:
        try:
            check_name(given["model"])
        except ValueError as e:
            raise ConfigError(f"model: {e}", f"--model: {e}") from None
    if "amp" in given and given["amp"] not in ("bf16", "fp16", "none"):
        raise ConfigError.about("amp", f"must be one of bf16, fp16, none; got {given['amp']!r}")
    return given


def resolve_plan(
    dataset: str,
    data_root: str | os.PathLike | None,
    *,
    output_dir: str | os.PathLike | None = None,
    init: str | os.PathLike | None = None,
    verify_images: bool = False,
    skip_bad: bool = False,
    known_bad: Mapping[str, list[str]] | None = None,
    require_init: bool = True,
    **overrides: Any,
) -> Plan:
    """The plan of ``sadcl reproduce DATASET``: the data's layout checked (:func:`sadcl.data.layouts.check_layout`
    raises :class:`~sadcl.data.layouts.LayoutError` naming what is missing), the recipe of :mod:`.recipes` with
    ``overrides`` (``epochs``, ``batch_size``, ``model``, ``img_size``, ``amp``, ``pretrained_backbone``,
    ``patience``; run settings ``num_workers``, ``device``) applied and recorded. ``skip_bad`` drops listed
    images that are missing (or, with ``verify_images``, unreadable) instead of refusing the data; the counts are
    then those kept, and with ``verify_images`` the plan records which images are dropped (:attr:`Plan.dropped`);
    ``known_bad`` is such a record from before (no image decoded). Reads files, writes nothing.
    ``data_root=None`` plans with the official release's image counts (a dry run before downloading);
    ``require_init=False`` lets a VOC plan go without its COCO model (a dry run: it cannot train)."""
    from ..data.layouts import check_layout

    if dataset not in DATASETS:
        raise ConfigError(
            f"unknown dataset {dataset!r}; one of {', '.join(DATASETS)}",
            f"unknown DATASET {dataset!r}; one of {', '.join(DATASETS)}",
        )
    recipe, given = DATASETS[dataset], _check_overrides(overrides)
    dropped: dict[str, list[str]] | None = None
    from_coco = recipe.init == "coco"
    if from_coco and init is None and require_init:
        problem = (
            f"{dataset} starts from the COCO model, as the paper does: give --init with the model "
            f"`sadcl reproduce coco2014` wrote (RUN/export)"
        )
        raise ConfigError(problem.replace("--init", "init="), problem)
    if not from_coco and init is not None:
        problem = f"{dataset} starts from an ImageNet backbone as the paper does; --init is only for voc2007/voc2012"
        raise ConfigError(problem.replace("--init", "init="), problem)
    if from_coco and "pretrained_backbone" in given:
        problem = (
            f"{dataset} starts from the COCO model given with --init, not an ImageNet backbone: "
            "drop --no-pretrained-backbone"
        )
        raise ConfigError(problem, problem)
    paper = {k: s.value for k, s in COMMON.items()}
    paper.update(model=recipe.variant, img_size=VARIANTS[recipe.variant].img_size, pretrained_backbone=not from_coco)
    chosen = {**paper, **{k: v for k, v in given.items() if k in OVERRIDES}}
    if "model" in given and "img_size" not in given:  # another architecture at its own resolution
        chosen["img_size"] = VARIANTS[given["model"]].img_size
    differs = [
        {"setting": flag(k), "paper": paper[k], "given": chosen[k]}
        for k in OVERRIDES
        if k in given and _normal(chosen[k]) != _normal(paper[k])
    ]
    init_info = _init_model(init, chosen["model"]) if from_coco and init is not None else None
    if data_root is None:  # a dry run before the data is on disk: the official release's sizes
        sizes = RELEASE_SIZES[dataset]
        counts = {split: {"images": n} for split, n in sizes.value.items()}
        layout = [f"no --data-root: the image counts of the official release ({sizes.source}); nothing checked"]
    else:
        report = check_layout(dataset, data_root, verify_images=verify_images, skip_bad=skip_bad, known_bad=known_bad)
        if skip_bad and (verify_images or known_bad is not None):  # the whole decision: nothing left to decode
            dropped = {split: r.dropped for split, r in report.splits.items()}
        counts = {
            split: {"images": r.images, "labels": r.labels, "positives": r.positives}
            for split, r in report.splits.items()
        }
        layout = list(report.lines())
    n_train = counts.get("train", {}).get("images", 0)
    if chosen["batch_size"] > n_train:
        raise ConfigError.about(
            "batch_size", f"{chosen['batch_size']} is larger than the {n_train} training images; lower it"
        )
    out = run_folder(dataset, output_dir)
    common = {k: chosen[k] for k in COMMON}
    steps = {
        "step1": {
            **common,
            **{k: s.value for k, s in STEPS["step1"].items()},
            "model": chosen["model"],
            "img_size": chosen["img_size"],
            "start": (
                "the COCO model (--init)"
                if from_coco
                else "an ImageNet ResNet-101 backbone"
                if chosen["pretrained_backbone"]
                else "random initialisation (--no-pretrained-backbone: a smoke test, not the paper's recipe)"
            ),
        },
        "step2": {
            **common,
            **{k: s.value for k, s in STEPS["step2"].items()},
            "model": chosen["model"],
            "img_size": chosen["img_size"],
            "start": "the step-1 best weights (step1/best.safetensors); prototypes from that model",
        },
    }
    if not from_coco:
        steps["step1"]["pretrained_backbone"] = chosen["pretrained_backbone"]
    notes = [recipe.note] if recipe.note else []
    notes.append(f"step 2 gamma-: {STEPS['step2']['gamma_neg'].source}")
    return Plan(
        dataset=dataset,
        variant=recipe.variant,
        data_root=None if data_root is None else os.fspath(data_root),
        output_dir=os.fspath(out),
        steps=steps,
        counts=counts,
        differs=differs,
        init=init_info,
        run={k: given[k] for k in RUN_SETTINGS if k in given},
        notes=notes,
        layout=layout,
        skip_bad=skip_bad,
        dropped=dropped,
    )


def run_folder(dataset: str, output_dir: str | os.PathLike | None) -> Path:
    """The run folder: ``output_dir``, by default ``runs/reproduce-DATASET``."""
    return Path(output_dir) if output_dir is not None else Path("runs") / f"reproduce-{dataset}"


def steps_per_epoch(plan: Plan, step: str) -> int:
    """Training steps per epoch: full global batches only (the trainer drops the last partial one)."""
    return plan.counts["train"]["images"] // plan.steps[step]["batch_size"]


# ----------------------------------------------------------------------------- the estimate
def estimate(plan: Plan) -> dict[str, Any]:
    """GPU time and memory of ``plan`` scaled from :data:`.recipes.MEASURED_STEP` (one H100, ResNet-101 at 448 px,
    batch 32): time by images and pixels, memory by batch and pixels. ``{"available": False, "why": ...}`` for an
    architecture other than the paper's ResNet-101 (the measured rate says nothing about it)."""
    m = MEASURED_STEP
    model = plan.steps["step1"]["model"]
    if VARIANTS[model].arch != VARIANTS[m["model"]].arch:
        return {"available": False, "why": f"the rate was measured for the paper's ResNet-101, not {model}"}
    val = plan.counts.get("val", {}).get("images", 0)
    steps: dict[str, Any] = {}
    for step, s in plan.steps.items():
        pixels = (s["img_size"] / m["img_size"]) ** 2
        rate = m["images_per_s"] / pixels  # training images per second at this resolution
        spe = steps_per_epoch(plan, step)
        epoch_s = spe * s["batch_size"] / rate + 2 * val * EVAL_FORWARD_SHARE / rate  # train + raw and EMA eval
        setup_s = plan.counts["train"]["images"] * EVAL_FORWARD_SHARE / rate if step == "step2" else 0.0
        expected = min(s["epochs"], AUTHORS_EPOCHS[step].value)
        steps[step] = {
            "steps_per_epoch": spe,
            "images_per_s": rate,
            "epoch_s": epoch_s,
            "prototype_init_s": setup_s,
            "expected_epochs": expected,
            "max_epochs": s["epochs"],
            "expected_s": setup_s + expected * epoch_s,
            "max_s": setup_s + s["epochs"] * epoch_s,
            "peak_gib": (m["static_mib"] + m["step_extra_peak_mib"] * s["batch_size"] / m["batch"] * pixels) / 1024,
        }
    return {
        "available": True,
        "steps": steps,
        "expected_s": sum(v["expected_s"] for v in steps.values()),
        "max_s": sum(v["max_s"] for v in steps.values()),
    }


def _hours(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h" if seconds >= 7200 else f"{seconds / 60:.0f} min"


def format_estimate(plan: Plan, est: Mapping[str, Any]) -> list[str]:
    """The estimate in words, with what it was measured on and what it assumes."""
    m = MEASURED_STEP
    if not est["available"]:
        return [f"GPU estimate: not available ({est['why']})"]
    lines = [
        f"GPU estimate (one {m['gpu']}; scaled from the training step measured there: {m['step_s'] * 1000:.1f} ms "
        f"per batch of {m['batch']} at {m['img_size']} px = {m['images_per_s']:.0f} images/s, {m['file']}, "
        f"{m['date_utc'][:10]}, torch {m['torch']}):"
    ]
    for step, e in est["steps"].items():
        s = plan.steps[step]
        lines.append(
            f"  {step}: {e['steps_per_epoch']} steps/epoch x {s['batch_size']} images at {s['img_size']} px, "
            f"~{e['images_per_s']:.0f} images/s, {_hours(e['epoch_s'])} per epoch with validation; "
            f"{e['expected_epochs']} epochs expected ({AUTHORS_EPOCHS[step].source}) = {_hours(e['expected_s'])}, "
            f"at most {e['max_epochs']} = {_hours(e['max_s'])}; peak memory ~{e['peak_gib']:.1f} GiB"
        )
    lines += [
        f"  total: ~{_hours(est['expected_s'])} expected, {_hours(est['max_s'])} if early stopping never fires",
        "  assumes: the rate scales with images x pixels; memory with batch x pixels (the label count is not "
        "modelled); step 1 (ASL only) at the SADCL step's rate (an upper bound); evaluation (raw + EMA each epoch) "
        f"at {1 / EVAL_FORWARD_SHARE:.0f}x the training rate (forward only, not measured); data loading keeping "
        f"up with ~{MEASURED_STEP['images_per_s']:.0f} images/s of JPEG decoding and augmentation (raise "
        "--num-workers; benchmarks/bench_input_pipeline.py measures the cores this needs)",
    ]
    return lines


def format_plan(plan: Plan) -> list[str]:
    """The resolved settings of both steps, which differ from the paper, images per split, steps per epoch."""
    lines = [f"sadcl reproduce {plan.dataset}: produces {plan.variant} in {plan.output_dir}"]
    lines.append(
        "data: "
        + "; ".join(
            f"{split} {c['images']:,} images" + (f", {c['positives']:,} positive labels" if "positives" in c else "")
            for split, c in plan.counts.items()
        )
    )
    if plan.init is not None:
        lines.append(f"init: {plan.init['path']} (sha256 {plan.init['sha256'][:12]}...)")
    elif DATASETS[plan.dataset].init == "coco":
        lines.append("init: not given; training needs --init with the COCO model `sadcl reproduce coco2014` wrote")
    for step, s in plan.steps.items():
        title = "Query2Label baseline" if s["objective"] == "asl" else "SADCL"
        shown = ", ".join(f"{k} {v}" for k, v in s.items() if k not in ("start", "checkpoint"))
        lines.append(f"{step} ({title}, from {s['start']}): {shown}; {steps_per_epoch(plan, step)} steps/epoch")
    if plan.differs:
        lines.append("NOT the paper's recipe: " + "; ".join(describe_override(d) for d in plan.differs))
    else:
        lines.append("the paper's recipe (no setting overridden)")
    lines += [f"note: {n}" for n in plan.notes]
    return lines
