"""Running a reproduction: the run folder (``plan.json``, ``step1/``, ``step2/``, ``eval.json``, ``export/``), both
training steps in-process with :class:`sadcl.train.Trainer` (each resumable through its ``last.pt``), then the
evaluation, the export and the ``weights.json`` record (:mod:`.results`)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._atomic import atomic_write_text
from .._files import open_regular
from .._text import printable
from ..data.layout_files import SPLITS, LayoutError, relative_name
from ..data.layouts import StaleDecisionError
from ..train.config import ConfigError
from .plan import PLAN_FORMAT, Plan, differences, estimate, format_estimate, format_plan, resolve_plan, run_folder
from .results import EVAL_NAME, check_repo_id, evaluate_run, export_run, publish_lines

__all__ = ["PLAN_NAME", "STEP_TITLES", "claim_run", "reproduce"]

PLAN_NAME = "plan.json"
STEP_TITLES = {"step1": "Query2Label baseline", "step2": "SADCL"}
# plan.json holds the images skip_bad drops (at most half of each split: ~6 MB for NUS-WIDE's 270,000 images)
_MAX_PLAN_BYTES = 64 << 20
_MAX_NAME = 4096  # characters in one recorded image name


def _read_plan(path: Path) -> dict[str, Any] | None:
    """The ``plan.json`` a reproduction wrote (None when the file is not one)."""
    try:
        with open_regular(path, "plan file", ValueError) as f:
            if os.fstat(f.fileno()).st_size > _MAX_PLAN_BYTES:
                return None
            data = json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != PLAN_FORMAT or not isinstance(data.get("compared"), dict):
        return None
    return data


_REPLACE = (
    "pass --overwrite to start over (replaces plan.json, eval.json and the files sadcl train and sadcl export "
    "write in step1/, step2/, export/; other files are kept)"
)


def _folder_error(problem: str) -> ConfigError:
    """A problem with the run folder, in Python's words (``output_dir``, ``overwrite=True``) and the CLI's."""
    return ConfigError(f"output_dir {problem}".replace("--overwrite", "overwrite=True"), f"--output {problem}")


def _folder_plan(out: Path, overwrite: bool) -> tuple[str, dict[str, Any] | None]:
    """``("new" | "overwrite" | "resume", its plan.json)`` of the run folder; raises :class:`ConfigError` for a
    file in its place or a folder holding files a reproduction did not write. Read-only."""
    if out.exists() and not out.is_dir():
        raise ConfigError.about("output_dir", f"{out} is a file, not a folder; give a folder for the run")
    names = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not names:
        return "new", None
    if overwrite:
        return "overwrite", None
    stored = _read_plan(out / PLAN_NAME)
    if stored is None:
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        problem = f"{out} holds files sadcl reproduce did not write ({shown}); pick another folder, or {_REPLACE}"
        raise _folder_error(problem)
    return "resume", stored


def _recorded_drops(stored: dict[str, Any] | None, dataset: str, out: Path) -> dict[str, list[str]] | None:
    """The images a run with ``skip_bad`` decided to drop, as its plan.json records them (None when it records
    none). Data only: checked to be names inside the image folder; they are compared with the listed names,
    never opened."""
    if stored is None or not stored.get("skip_bad") or stored.get("dataset") != dataset:
        return None  # another plan: the comparison of settings names what differs
    record = stored.get("dropped")
    if record is None:
        return None  # written before the decision was recorded: decide again
    where = out / PLAN_NAME
    ok = isinstance(record, dict) and set(record) <= set(SPLITS)
    ok = ok and all(isinstance(v, list) and all(isinstance(n, str) for n in v) for v in record.values())
    bad = None if ok else "it is not split -> list of image names"
    for names in record.values() if ok else ():
        bad = next((f"image name {printable(n[:80])!r}" for n in names if not _inside(n)), None)
        if bad:
            break
    if bad:
        problem = f"{where} records the images to drop wrongly ({bad}); {_REPLACE}"
        raise _folder_error(problem)
    return {split: list(names) for split, names in record.items()}


def _inside(name: str) -> bool:
    """A recorded name is a plain path inside an image folder (the rule for names read from a dataset's lists)."""
    try:
        return len(name) <= _MAX_NAME and relative_name(name, "") == name
    except LayoutError:
        return False


def claim_run(out: Path, plan: Plan, overwrite: bool) -> str:
    """What the run folder allows: ``"new"``, ``"resume"`` (its plan.json matches) or ``"overwrite"``; raises
    :class:`ConfigError` for a folder holding another plan or files a reproduction did not write. Read-only."""
    return _claim(out, plan, *_folder_plan(out, overwrite))


def _claim(out: Path, plan: Plan, state: str, stored: dict[str, Any] | None) -> str:
    """:func:`claim_run` on the folder's state and plan.json as :func:`_folder_plan` read them."""
    if stored is None:
        return state
    diffs = differences(stored["compared"], plan)
    if diffs:
        problem = (
            f"{out} holds a reproduction with other settings: {'; '.join(diffs[:4])}; rerun with its settings "
            f"to continue it, or {_REPLACE}"
        )
        raise ConfigError(problem.replace("--overwrite", "overwrite=True"), f"--output {problem}")
    return "resume"


def _step_config(plan: Plan, step: str, out: Path) -> dict[str, Any]:
    """The :class:`~sadcl.train.TrainConfig` recipe keywords of ``step`` (run settings are added by the caller)."""
    s = dict(plan.steps[step])
    kwargs = {k: v for k, v in s.items() if k not in ("start", "model", "pretrained_backbone")}
    if step == "step1":
        kwargs["model"] = s["model"]
        if plan.init is not None:
            kwargs["checkpoint"] = plan.init["weights"]  # the COCO model, with a head change to the data's labels
        else:
            kwargs["pretrained_backbone"] = s["pretrained_backbone"]
    else:  # the step-1 model's own architecture and weights
        kwargs["checkpoint"] = os.fspath(out / "step1" / "best.safetensors")
    return kwargs


def _run_step(
    plan: Plan,
    step: str,
    out: Path,
    *,
    fresh: bool,
    budget: int | None,
    progress: bool | None,
    on_epoch: Callable[[dict[str, Any]], None] | None,
    say: Callable[[str], None],
) -> tuple[bool, int]:
    """Train ``step`` (continue its ``last.pt`` unless ``fresh``); returns (finished, epochs trained now)."""
    from ..data.layouts import decided
    from ..train.config import RunFinishedError, TrainConfig
    from ..train.data import DataSpec
    from ..train.trainer import Trainer

    folder = out / step
    runtime: dict[str, Any] = dict(
        data=DataSpec(path=plan.data_root, format=plan.dataset, split="train", skip_bad=plan.skip_bad),
        val_data=DataSpec(path=plan.data_root, format=plan.dataset, split="val", skip_bad=plan.skip_bad),
        output_dir=os.fspath(folder),
        stop_after_epochs=budget,
        progress=progress,
        **plan.run,
    )
    if not fresh and (folder / "last.pt").is_file():
        cfg = TrainConfig.from_checkpoint(folder, **runtime)
    else:  # the step's folder is ours (the plan says so): replace what an interrupted start left there
        started = folder.is_dir() and any(folder.iterdir())
        cfg = TrainConfig(**_step_config(plan, step, out), **runtime, overwrite=started)
    try:
        with decided(plan.dataset, plan.data_root, plan.dropped or {}):  # the datasets: built once, here
            trainer = Trainer(cfg, on_epoch=on_epoch)
    except RunFinishedError:
        say(f"{step} ({STEP_TITLES[step]}): already finished in {folder}; skipped")
        return True, 0
    start = trainer.start_epoch
    say(
        f"{step} ({STEP_TITLES[step]}): "
        + (f"continuing {folder} at epoch {start}" if start else f"training into {folder}")
        + f" ({trainer.steps_per_epoch} steps/epoch, up to {cfg.epochs} epochs)"
    )
    summary = trainer.fit()
    done = summary["epochs_completed"]
    return bool(summary["stopped_early"] or done >= cfg.epochs), done - start


def reproduce(
    dataset: str,
    data_root: str | os.PathLike | None,
    *,
    output_dir: str | os.PathLike | None = None,
    init: str | os.PathLike | None = None,
    repo_id: str | None = None,
    dry_run: bool = False,
    overwrite: bool = False,
    verify_images: bool = False,
    skip_bad: bool = False,
    stop_after_epochs: int | None = None,
    progress: bool | None = None,
    say: Callable[[str], None] = print,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Reproduce the paper's checkpoint for ``dataset`` (``coco2014``, ``voc2007``, ``voc2012``, ``nuswide``,
    ``vg500``) from the data under ``data_root``: step 1 (Query2Label baseline), step 2 (SADCL), evaluation on the
    validation split next to the paper's numbers (``eval.json``), an export (``export/``) and its ``weights.json``
    record; rerunning continues where an interrupted run stopped. ``overrides``: see :func:`.plan.resolve_plan`.
    ``dry_run`` only prints the plan and the GPU estimate (nothing written). ``stop_after_epochs`` ends this call
    after that many epochs (rerun to continue). ``skip_bad`` drops missing or unreadable listed images (counted in
    the layout report) instead of refusing the data: decided once, every image decoded at the layout check (not in
    a dry run), recorded in ``plan.json`` and reused by both steps, the evaluation and a rerun. Messages go to
    ``say``, each epoch's record to ``on_epoch``.

    Returns ``{"status": "dry-run" | "stopped" | "done", "plan": ..., "output_dir": ..., ...}`` (with ``eval``,
    ``record`` and ``push_command`` when done).
    """
    if repo_id is not None:
        check_repo_id(repo_id)
    if stop_after_epochs is not None:
        from ..train.config import check_numbers

        check_numbers({"stop_after_epochs": stop_after_epochs})
    if data_root is None and not dry_run:
        raise ConfigError(
            "data_root is needed to train (only a dry run may omit it)",
            "--data-root DIR is needed "
            "to train (only --dry-run may omit it: it then plans with the official release's counts)",
        )
    # skip_bad: which images are dropped is decided once, decoding every image (as training would), and recorded
    # in plan.json; a rerun reuses the record, and the steps and the evaluation load the splits with it.
    folder = run_folder(dataset, output_dir)
    state, stored = _folder_plan(folder, overwrite)  # a foreign folder is refused before any image is decoded
    known = _recorded_drops(stored, dataset, folder) if skip_bad else None
    # (a run folder without skip_bad refuses this run anyway: no need to decode for it)
    decide = skip_bad and not dry_run and known is None and (stored is None or stored.get("skip_bad") is True)
    try:
        plan = resolve_plan(
            dataset,
            data_root,
            output_dir=output_dir,
            init=init,
            verify_images=verify_images or decide,
            skip_bad=skip_bad,
            known_bad=known,
            require_init=not dry_run,
            **overrides,
        )
    except StaleDecisionError as e:
        if known is None:
            raise
        raise _folder_error(f"{folder / PLAN_NAME}: {e.problem}; {_REPLACE}") from None
    out = Path(plan.output_dir)  # the same folder (run_folder)
    for line in plan.layout:
        say(line)
    for line in format_plan(plan):
        say(line)
    state = _claim(out, plan, state, stored)
    if dry_run:
        for line in format_estimate(plan, estimate(plan)):
            say(line)
        action = {"new": "start", "resume": "continue", "overwrite": "start over in"}[state]
        say(f"dry run: nothing written; the command without --dry-run would {action} {out}")
        return {"status": "dry-run", "plan": plan.to_json(), "output_dir": os.fspath(out), "state": state}
    if state != "resume":
        out.mkdir(parents=True, exist_ok=True)
        if overwrite:
            (out / EVAL_NAME).unlink(missing_ok=True)  # ours (the command's own file name); never stale
    if state != "resume" or (plan.dropped is not None and known is None):  # a run from before the record: add it
        atomic_write_text(out / PLAN_NAME, json.dumps(plan.to_json(), indent=2, default=str) + "\n")
    budget = stop_after_epochs
    for step in plan.steps:
        finished, trained = _run_step(
            plan, step, out, fresh=state != "resume", budget=budget, progress=progress, on_epoch=on_epoch, say=say
        )
        if budget is not None:
            budget -= trained
        if not finished or (budget is not None and budget <= 0 and step == "step1"):
            say(
                f"stopped after {stop_after_epochs} epoch(s) as asked (--stop-after-epochs); run the same command "
                f"again to continue with {step if not finished else 'step2'}"
            )
            return {"status": "stopped", "plan": plan.to_json(), "output_dir": os.fspath(out), "step": step}
    results, model = evaluate_run(plan, out, say=say)
    export = export_run(plan, out, results, model, repo_id=repo_id, say=say)
    lines, record, command = publish_lines(plan, out, export, repo_id)
    for line in lines:
        say(line)
    return {
        "status": "done",
        "plan": plan.to_json(),
        "output_dir": os.fspath(out),
        "eval": results,
        "record": record,
        "push_command": command,
    }
