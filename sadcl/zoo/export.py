"""Export a SADCL model as a self-describing folder that sadcl, timm and the Hugging Face Hub all read.

An export folder holds (and ``config.json`` lists, with their sha256) exactly the files ``sadcl export`` wrote:

* ``model.safetensors``: the weights, with the self-describing header (:mod:`sadcl.zoo.header`);
* ``config.json``: timm's layout (``architecture``, ``num_classes``, ``label_names``, ``model_args``,
  ``pretrained_cfg`` with timm's preprocessing keys) plus a ``sadcl`` section (format version, the variant and
  source it descends from, dataset, metrics and their source, recipe, the weights' and every file's sha256);
* ``README.md``: the Hub model card (:mod:`sadcl.zoo.card`);
* ``model.onnx`` on request (:mod:`sadcl.zoo.onnx_export`).

``config.json`` is written last: a folder without it is not an export, and a crash part-way leaves the previous
export's ``config.json``, whose checksums then refuse the mixed folder. Reading (:func:`read_export`,
:func:`export_manifest`) validates every field as untrusted data; fetching an export from the Hub is
:func:`sadcl.zoo.hub.download_export`'s job and building the model :func:`sadcl.zoo.factory.create_model`'s
(this module imports neither).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from .._atomic import atomic_write_text
from .._files import open_regular
from ..data.preprocessing import Preprocessing, PreprocessingError
from ..model import SADCL
from .card import model_card
from .header import HeaderError, validate_config
from .loading import checkpoint_metadata, export_state_dict, header_for
from .onnx_export import ONNX_NAME, export_onnx, require_onnx
from .safetensors_io import save_safetensors
from .weights import CheckpointFileError, ChecksumError, sha256_file, verify_file

__all__ = [
    "CONFIG_NAME",
    "ONNX_NAME",
    "WEIGHTS_NAME",
    "Export",
    "ExportError",
    "export_manifest",
    "export_model",
    "export_onnx",
    "export_section",
    "model_card",
    "parse_export",
    "read_export",
    "read_export_config",
]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
EXPORT_FORMAT = "sadcl-export"
EXPORT_FORMAT_VERSION = 2
_MAX_CONFIG_BYTES = 16 << 20  # a config.json is kilobytes; refuse to parse a file claiming to be one of gigabytes


class ExportError(CheckpointFileError):
    """An export folder cannot be written or read (not empty, not an export, inconsistent)."""


# ----------------------------------------------------------------------------- writing
def export_model(
    model: SADCL,
    out_dir: str | os.PathLike,
    *,
    metrics: Mapping[str, float] | None = None,
    metrics_source: str | None = None,
    recipe: Mapping[str, Any] | str | None = None,
    repo_id: str | None = None,
    license: str | None = None,
    onnx: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write ``model.safetensors``, ``README.md`` (and ``model.onnx``), then ``config.json`` into ``out_dir``.

    Args:
        model: the SADCL model (its ``config`` and ``pretrained_cfg`` describe it).
        out_dir: the export folder. It must be new or empty, unless ``overwrite``: then the export files in it
            are replaced, and nothing else in the folder is touched (a ``model.onnx`` is removed only when the
            folder's previous ``config.json`` lists it as written by sadcl).
        metrics: results of *these* weights, in percent (``{"mAP": 85.6, "CF1": ...}``). When ``None``, the
            model's recorded results (``pretrained_cfg["metrics"]``) are used with their source.
        metrics_source: where ``metrics`` come from (default: "measured on these weights" when given).
        recipe: how the weights were obtained: a mapping (rendered as a list) or free text.
        repo_id: the Hub repository the folder is meant for (used in the card's usage snippet).
        license: a Hub licence id for the card and ``pretrained_cfg`` (``"apache-2.0"``...).
        onnx: also write ``model.onnx`` (needs ``pip install 'sadcl[onnx]'``; checked before anything is written).

    Returns:
        The ``config.json`` content.
    """
    if not isinstance(model, SADCL):
        raise TypeError(f"export_model needs a sadcl SADCL model, got {type(model).__name__}")
    if onnx:
        require_onnx()
    out = Path(out_dir).expanduser()
    previous = _claim_folder(out, overwrite)
    created_folder = not out.exists()
    before = {p.name for p in out.iterdir()} if out.is_dir() else set()
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _write_export(
            model,
            out,
            previous,
            metrics=metrics,
            metrics_source=metrics_source,
            recipe=recipe,
            repo_id=repo_id,
            license=license,
            onnx=onnx,
        )
    except BaseException:
        # Nothing half-done stays behind: the files this call created go (each was written atomically, so
        # no temporary is left either), and the folder too when this call made it.
        for name in (WEIGHTS_NAME, CARD_NAME, ONNX_NAME, CONFIG_NAME):
            if name not in before:
                (out / name).unlink(missing_ok=True)
        if created_folder and not any(out.iterdir()):
            out.rmdir()
        raise


def _write_export(
    model: SADCL,
    out: Path,
    previous: set[str],
    *,
    metrics: Mapping[str, float] | None,
    metrics_source: str | None,
    recipe: Mapping[str, Any] | str | None,
    repo_id: str | None,
    license: str | None,
    onnx: bool,
) -> dict[str, Any]:
    """The files of an export, ``config.json`` last (see :func:`export_model`)."""
    weights_path = out / WEIGHTS_NAME
    digest = save_safetensors(export_state_dict(model), weights_path, checkpoint_metadata(model))
    config = build_config(
        model,
        weights_sha256=digest,
        weights_size=weights_path.stat().st_size,
        metrics=metrics,
        metrics_source=metrics_source,
        recipe=recipe,
        license=license,
    )
    files = config["sadcl"]["files"]
    if onnx:
        onnx_path = export_onnx(model, out / ONNX_NAME)
        files[ONNX_NAME] = {"sha256": sha256_file(onnx_path), "size": onnx_path.stat().st_size}
        config["sadcl"]["onnx"] = {
            "filename": ONNX_NAME,
            "input": "images",
            "output": "logits",
            "input_size": config["pretrained_cfg"]["input_size"],
            "dynamic_axes": ["batch"],
            **files[ONNX_NAME],
        }
    elif ONNX_NAME in previous and (out / ONNX_NAME).exists():
        (out / ONNX_NAME).unlink()  # ours, from the earlier export: it would describe different weights
    card = model_card(config, repo_id=repo_id, license=license)
    atomic_write_text(out / CARD_NAME, card)
    files[CARD_NAME] = {"sha256": sha256_file(out / CARD_NAME), "size": (out / CARD_NAME).stat().st_size}
    atomic_write_text(out / CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    return config


def _claim_folder(out: Path, overwrite: bool) -> set[str]:
    """Check that ``out`` may receive an export; return the files a previous sadcl export there wrote."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"export folder {out} is a file; choose a folder")
    present = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not present:
        return set()
    if not overwrite:
        raise ExportError(
            f"export folder {out} is not empty ({len(present)} entries, e.g. {present[0]}); choose a "
            "new folder, or pass overwrite=True to replace the export files in it (nothing else "
            "in it is touched)"
        )
    try:
        return set(export_manifest(read_export_config(out / CONFIG_NAME), out))
    except CheckpointFileError:  # ExportError included
        return set()  # not an export of ours: we remove nothing


def build_config(
    model: SADCL,
    *,
    weights_sha256: str,
    weights_size: int,
    metrics: Mapping[str, float] | None = None,
    metrics_source: str | None = None,
    recipe: Mapping[str, Any] | str | None = None,
    license: str | None = None,
) -> dict[str, Any]:
    """The ``config.json`` of an export (format version 2): timm's keys plus the ``sadcl`` section."""
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    header = header_for(model)
    if metrics is None:
        metrics, metrics_source = cfg.get("metrics"), metrics_source or cfg.get("metrics_source")
    elif metrics_source is None:
        metrics_source = "measured on these weights"
    pretrained_cfg = dict(
        header.preprocessing.to_dict(),
        fixed_input_size=False,
        classifier="fc",
        num_classes=model.num_classes,
        paper_ids="arXiv:2307.09715",
    )
    if license:
        pretrained_cfg["license"] = license
    weights = {"filename": WEIGHTS_NAME, "sha256": weights_sha256, "size": weights_size}
    return {
        "architecture": header.variant or "sadcl",  # the registered timm entry point that rebuilds it
        "num_classes": model.num_classes,
        "label_names": list(model.label_names),
        "model_args": dict(header.config),
        "pretrained_cfg": pretrained_cfg,
        "sadcl": {
            "format": EXPORT_FORMAT,
            "format_version": EXPORT_FORMAT_VERSION,
            "sadcl_version": __version__,
            "variant": header.variant,
            "source": header.source,
            "dataset": cfg.get("dataset"),
            "description": cfg.get("description"),
            "metrics": dict(metrics) if metrics else None,
            "metrics_source": metrics_source if metrics else None,
            "recipe": dict(recipe) if isinstance(recipe, Mapping) else recipe,
            "weights": weights,
            "onnx": None,
            "files": {WEIGHTS_NAME: {k: weights[k] for k in ("sha256", "size")}},
        },
    }


# ----------------------------------------------------------------------------- reading
@dataclass
class Export:
    """A validated export: what :func:`sadcl.zoo.factory.create_model` needs to rebuild the model."""

    config: dict[str, Any]  # SADCL constructor config
    preprocessing: Preprocessing
    variant: str | None
    weights_path: Path
    weights: dict[str, Any]  # filename, sha256, size
    meta: dict[str, Any] = field(default_factory=dict)  # dataset, description, metrics, metrics_source, recipe
    format_version: int = EXPORT_FORMAT_VERSION


def read_export_config(path: Path) -> dict[str, Any]:
    """The raw ``config.json`` of an export (format version 1 or 2), checked to be one."""
    if not path.exists() and not path.is_symlink():
        raise ExportError(f"{path.parent} is not a SADCL export: {path.name} is missing")
    try:
        with open_regular(path, "export config", ExportError) as f:  # a FIFO named config.json never blocks
            if os.fstat(f.fileno()).st_size > _MAX_CONFIG_BYTES:
                raise ExportError(f"{path} is too large for an export's config.json")
            config = json.loads(f.read().decode("utf-8"))
    except FileNotFoundError:
        raise ExportError(f"{path.parent} is not a SADCL export: {path.name} is missing") from None
    except (OSError, ValueError) as e:
        raise ExportError(f"{path} is not a readable JSON file ({e})") from None
    if not isinstance(config, dict):
        raise ExportError(f"{path} is not a SADCL export config (not a JSON object)")
    info = config.get("sadcl") if isinstance(config.get("sadcl"), dict) else config  # version 2 | version 1
    if info.get("format") != EXPORT_FORMAT:
        raise ExportError(f'{path} is not a SADCL export config (no "format": "{EXPORT_FORMAT}")')
    version = info.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ExportError(f"{path}: format_version must be a positive integer, got {version!r}")
    if version > EXPORT_FORMAT_VERSION:
        raise ExportError(f"{path} was written by a newer sadcl (format_version {version}); upgrade sadcl")
    if (version >= 2) != (info is not config):
        raise ExportError(f"{path}: format_version {version} does not match the file's layout")
    return config


def parse_export(config: Mapping[str, Any], where: str, weights_path: Path) -> Export:
    """Validate a ``config.json`` (untrusted) into an :class:`Export`; errors name ``where`` and the field."""
    try:
        if isinstance(config.get("sadcl"), dict):  # version 2
            info = config["sadcl"]
            args = validate_config(config.get("model_args"), f"{where}: model_args")
            pre = Preprocessing.from_dict(config.get("pretrained_cfg"), f"{where}: pretrained_cfg")
        else:  # version 1 (sadcl 0.1)
            info = config
            args = validate_config(config.get("architecture"), f"{where}: architecture")
            raw = dict(config.get("preprocessing") or {})
            raw.pop("resize", None)  # version 1 described the squash resize in words
            pre = Preprocessing.from_dict(raw, f"{where}: preprocessing")
    except (HeaderError, PreprocessingError) as e:
        raise ExportError(str(e)) from None
    weights = info.get("weights")
    if (
        not isinstance(weights, dict)
        or not isinstance(weights.get("sha256"), str)
        or not isinstance(weights.get("size"), int)
        or isinstance(weights.get("size"), bool)
    ):
        raise ExportError(f"{where}: weights must record the sha256 and size of {WEIGHTS_NAME}")
    meta: dict[str, Any] = {}
    for key in ("dataset", "description", "metrics_source"):
        if isinstance(info.get(key), str):
            meta[key] = info[key]
    metrics = info.get("metrics")
    if isinstance(metrics, dict) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values()
    ):
        meta["metrics"] = dict(metrics)
    if isinstance(info.get("recipe"), (str, dict)):
        meta["recipe"] = info["recipe"]
    variant = info.get("variant") if isinstance(info.get("variant"), str) else None
    return Export(
        config=args,
        preprocessing=pre,
        variant=variant,
        weights_path=weights_path,
        weights={"filename": WEIGHTS_NAME, "sha256": weights["sha256"], "size": weights["size"]},
        meta=meta,
        format_version=int(info["format_version"]),
    )


def read_export(folder: Path) -> Export:
    """A local export folder, its weights verified against ``config.json``."""
    if not folder.is_dir():
        raise ExportError(f"export folder not found: {folder} (expected {CONFIG_NAME} and {WEIGHTS_NAME})")
    export = parse_export(read_export_config(folder / CONFIG_NAME), str(folder), folder / WEIGHTS_NAME)
    if not export.weights_path.is_file():
        raise ExportError(f"{folder} is not a SADCL export: {WEIGHTS_NAME} is missing")
    try:
        verify_file(export.weights_path, export.weights["sha256"], export.weights["size"])
    except ChecksumError as e:
        raise ChecksumError(
            f"{folder}: {WEIGHTS_NAME} does not match config.json ({e}); export the model again"
        ) from None
    return export


def _file_record(entry: Any, where: str) -> dict[str, Any]:
    if not isinstance(entry, Mapping):
        raise ExportError(f'{where} must be an object with "sha256" and "size", got {entry!r:.80}')
    digest, size = entry.get("sha256"), entry.get("size")
    if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
        raise ExportError(f'{where}: "sha256" must be 64 lower-case hex characters, got {digest!r:.80}')
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ExportError(f'{where}: "size" must be a non-negative integer, got {size!r:.80}')
    return {"sha256": digest, "size": size}


def export_section(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """Where an export config keeps its sadcl fields: ``config["sadcl"]`` (format_version 2) or the top level (1)."""
    section = config.get("sadcl")
    return section if isinstance(section, Mapping) else config


def export_manifest(config: Mapping[str, Any], folder: Path) -> dict[str, dict[str, Any] | None]:
    """The files an export's ``config.json`` says ``sadcl export`` wrote: ``{name: {"sha256", "size"} or None}``.

    ``config`` is a ``config.json`` checked by :func:`sadcl.zoo.export.read_export_config`. ``config.json``
    itself is always listed (``None``: it is the manifest). format_version 2 lists its files under
    ``config["sadcl"]["files"]``; format_version 1 implies ``model.safetensors`` (checked against
    ``config["weights"]``), ``README.md`` (no recorded hash) and ``model.onnx`` when ``config["onnx"]`` is set.
    Only names ``sadcl export`` writes are accepted: a file is data, never a list of what to publish.

    Raises:
        ExportError: ``config`` lists something ``sadcl export`` never writes, or a malformed record.
    """
    where = folder / CONFIG_NAME
    section = export_section(config)
    manifest: dict[str, dict[str, Any] | None] = {CONFIG_NAME: None}
    if section.get("format_version") == 1:
        manifest[WEIGHTS_NAME] = _file_record(config.get("weights"), f'{where}: "weights"')
        manifest[CARD_NAME] = None
        if config.get("onnx") is not None:
            manifest[ONNX_NAME] = _file_record(config["onnx"], f'{where}: "onnx"')
        return manifest
    files = section.get("files")
    if not isinstance(files, Mapping) or WEIGHTS_NAME not in files:
        raise ExportError(f'{where}: "sadcl"."files" must be an object listing at least {WEIGHTS_NAME}')
    allowed = (WEIGHTS_NAME, CARD_NAME, ONNX_NAME)  # nothing else is ever published, whatever config.json says
    for name, entry in files.items():
        if name not in allowed:
            raise ExportError(
                f"{where} lists {name!r:.80}, which `sadcl export` never writes; refusing to publish "
                f"it (export files: {CONFIG_NAME}, {', '.join(allowed)})"
            )
        manifest[name] = _file_record(entry, f'{where}: "sadcl"."files".{name}')
    return manifest
