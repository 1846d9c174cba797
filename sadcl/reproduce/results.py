"""What a finished reproduction hands over: the paper's table of the step-2 weights next to the paper's numbers
(``eval.json``), the export (``export/``), its ``weights.json`` record and the ``sadcl push`` command (never run)."""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import shlex
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .._atomic import atomic_write_text
from ..train.config import ConfigError
from ..zoo.variants import VARIANTS
from .plan import Plan, describe_override, flag
from .recipes import COMMON

__all__ = ["TABLE_KEYS", "check_repo_id", "comparison_table", "evaluate_run", "export_run", "publish_lines"]

_COLUMNS = ("CP", "CR", "CF1", "OP", "OR", "OF1")
TABLE_KEYS = ("mAP", *_COLUMNS, *(f"{c}_top3" for c in _COLUMNS))  # the paper's table, in its order
EVAL_NAME = "eval.json"
EXPORT_NAME = "export"
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


def check_repo_id(repo_id: str) -> None:
    """``ORG/NAME``, as the Hub spells repositories."""
    if not isinstance(repo_id, str) or not _REPO_ID.fullmatch(repo_id) or len(repo_id) > 96:
        raise ConfigError.about("repo_id", f"must look like ORG/NAME (a Hub model repository), got {repo_id!r}")


def _cell(value: Any) -> str:
    return f"{value:6.1f}" if isinstance(value, (int, float)) and math.isfinite(value) else f"{'—':>6}"


def comparison_table(results: Mapping[str, Any], paper: Mapping[str, Any] | None) -> list[str]:
    """The paper's table layout (mAP | CP CR CF1 OP OR OF1 | top-3 …), reproduced and paper rows; "—" where the
    paper reports nothing."""
    block = "".join(f"{c:>6}" for c in _COLUMNS)
    rows = [
        f"{'':<10} {'':>6} |{'All':^{len(block)}} |{'Top-3':^{len(block)}}",
        f"{'':<10} {'mAP':>6} |{block} |{block}",
    ]
    for name, values in (("reproduced", results), ("paper", paper or {})):
        cells = [_cell(values.get(k)) for k in TABLE_KEYS]
        rows.append(f"{name:<10} {cells[0]} |{''.join(cells[1:7])} |{''.join(cells[7:])}")
    return [row.rstrip() for row in rows]


def _training_info(path: Path) -> dict[str, Any] | None:
    """How training selected the weights in ``path`` (epoch, raw/EMA, validation mAP), from their header."""
    from ..zoo.header import parse_header
    from ..zoo.safetensors_io import read_safetensors_metadata

    header = parse_header(read_safetensors_metadata(path), str(path))
    return None if header is None else header.training


def _finite(value: Any) -> Any:
    return value if not isinstance(value, float) or math.isfinite(value) else None


def evaluate_run(plan: Plan, out: Path, *, say: Callable[[str], None]) -> tuple[dict[str, Any], Any]:
    """The paper's metrics of ``step2/best.safetensors`` on the validation split, next to the paper's; writes
    ``eval.json``; returns (its content, the model)."""
    from ..data.layouts import load_split
    from ..data.preprocessing import create_transform
    from ..train.config import DEFAULT_WORKERS
    from ..train.evaluation import evaluate_model
    from ..zoo import create_model
    from ..zoo.weights import sha256_file

    weights = out / "step2" / "best.safetensors"
    model = create_model(weights)
    dataset = load_split(
        plan.dataset,
        plan.data_root,
        "val",
        transform=create_transform(model),
        skip_bad=plan.skip_bad,
        dropped=None if plan.dropped is None else plan.dropped["val"],  # decided at the layout check
    )
    s = plan.steps["step2"]
    metrics = evaluate_model(
        model,
        dataset,
        batch_size=s["batch_size"],
        num_workers=plan.run.get("num_workers", DEFAULT_WORKERS),
        device=plan.run.get("device"),
        amp=s["amp"],
        threshold=COMMON["threshold"].value,
    )
    variant = VARIANTS[plan.variant]
    result = {
        "dataset": plan.dataset,
        "variant": plan.variant,
        "split": "val",
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "weights": {"path": os.fspath(weights), "sha256": sha256_file(weights)},
        "training": {step: _training_info(out / step / "best.safetensors") for step in plan.steps},
        "metrics": {k: _finite(metrics[k]) for k in (*TABLE_KEYS, "mAP_sklearn") if k in metrics},
        "num_images": metrics["num_images"],
        "num_classes_evaluated": metrics["num_classes_evaluated"],
        "num_classes": metrics["num_classes"],
        "threshold": metrics["threshold"],
        "per_class_AP": {k: _finite(v) for k, v in metrics["per_class_AP"].items()},
        "paper": {"metrics": variant.metrics, "source": variant.metrics_source},
        "not_the_papers_recipe": plan.differs,
    }
    text = json.dumps(result, indent=2, default=str, allow_nan=False) + "\n"
    atomic_write_text(out / EVAL_NAME, text)
    say(
        f"evaluation of {weights} on the {plan.dataset} validation split ({metrics['num_images']} images, "
        f"{metrics['num_classes_evaluated']} of {metrics['num_classes']} labels with a positive; "
        f"score > {metrics['threshold']:g}); paper: {variant.metrics_source}"
    )
    for line in comparison_table(result["metrics"], variant.metrics):
        say(line)
    if plan.differs:
        say("NOT the paper's recipe (" + ", ".join(d["setting"] for d in plan.differs) + "): compare with care")
    say(f"wrote {out / EVAL_NAME}")
    return result, model


def export_run(
    plan: Plan, out: Path, result: Mapping[str, Any], model: Any, *, repo_id: str | None, say: Callable[[str], None]
) -> dict[str, Any]:
    """``export/`` with the reproduced metrics and their source; returns its ``config.json``."""
    from ..zoo.export import export_model

    metrics = {k: round(float(v), 2) for k, v in result["metrics"].items() if k in TABLE_KEYS and v is not None}
    recipe_note = (
        "the paper's recipe"
        if not plan.differs
        else "NOT the paper's recipe: " + "; ".join(describe_override(d) for d in plan.differs)
    )
    source = (
        f"reproduced by sadcl reproduce on {result['date_utc'][:10]} ({plan.dataset} validation split, "
        f"{result['num_images']} images; {recipe_note})"
    )
    s1, s2 = plan.steps["step1"], plan.steps["step2"]
    recipe = {
        "command": f"sadcl reproduce {plan.dataset}",
        "step 1": (
            f"Query2Label baseline (ASL, gamma- {s1['gamma_neg']}, {s1['augment']} augmentation) from {s1['start']}"
        ),
        "step 2": (
            f"SADCL (ASL + {s2['loss_weights'][1]:g} SSCL + {s2['loss_weights'][2]:g} PSCL, gamma- {s2['gamma_neg']}, "
            f"memory bank, {s2['augment']} augmentation) from the step-1 best weights"
        ),
        "optimisation": (
            f"AdamW lr {s2['lr']:g}, OneCycle over {s2['epochs']} epochs, EMA {s2['ema_decay']}, batch "
            f"{s2['batch_size']}, {s2['img_size']} px, early stopping patience {s2['patience']}"
        ),
        "recipe": recipe_note,
    }
    folder = out / EXPORT_NAME
    # The run folder is ours (plan.json), so its export may be replaced: only the export's own files are.
    config = export_model(
        model, folder, metrics=metrics, metrics_source=source, recipe=recipe, repo_id=repo_id, overwrite=True
    )
    say(f"wrote the export {folder} (model.safetensors sha256 {config['sadcl']['weights']['sha256']})")
    return config


def publish_lines(
    plan: Plan, out: Path, config: Mapping[str, Any], repo_id: str | None
) -> tuple[list[str], dict[str, Any], str]:
    """The ``weights.json`` record of the export (revision null: nothing is on the Hub yet) and the ``sadcl push``
    command that would publish it; nothing is uploaded here."""
    from ..zoo.weights import WeightsRecord

    # The record belongs to the variant the weights are: an override of the model or resolution makes another one
    # (sadcl_tiny), or none registered (then it is no weights.json entry, but still what `sadcl push` records).
    produced = config["sadcl"]["variant"]
    hub_id = repo_id or f"<your-org>/{produced or plan.variant}"
    w = config["sadcl"]["weights"]
    record = {
        "hf_hub_id": hub_id,
        "filename": w["filename"],
        "revision": None,
        "sha256": w["sha256"],
        "size": w["size"],
    }
    WeightsRecord(**record)  # a valid record of the table (the placeholder too)
    command = f"sadcl push {shlex.quote(os.fspath(out / EXPORT_NAME))} {shlex.quote(hub_id)}"
    if produced == plan.variant:
        lines = [
            f"weights.json record for {plan.variant} (revision stays null until pushed; `sadcl push` prints it "
            "with the pinned commit):"
        ]
    else:
        what = f"the record of {produced}" if produced else "no weights.json entry"
        lines = [
            f"the weights are {produced or 'no registered variant'}, not {plan.variant} (the overrides changed the "
            f"architecture or resolution), so this is {what}:"
        ]
    lines += [
        json.dumps({produced: record} if produced else record, indent=2),
        "to publish (nothing was uploaded; the repository is created private unless you add --public"
        + ("" if repo_id else f"; replace <your-org> or pass {flag('repo_id')}")
        + "):",
        f"  {command}",
    ]
    return lines, record, command
