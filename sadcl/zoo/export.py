"""Export a SADCL model as a self-describing folder, publish it on the Hugging Face Hub, export ONNX.

An export folder holds three files (plus ``model.onnx`` on request):

* ``model.safetensors``: the weights, with the model's constructor config in the header (``sadcl_config``);
* ``config.json``: architecture (the constructor config), label names, preprocessing, metrics and the
  weights' sha256, which is everything :func:`load_exported` needs to rebuild the model without the
  variant table;
* ``README.md``: a Hub model card (YAML front matter: ``library_name: sadcl``, ``pipeline_tag``, tags,
  ``model-index`` with the metrics; sections: usage, labels, training recipe, citation).

:func:`push_to_hub` uploads such a folder with ``HfApi.create_repo`` + ``upload_folder`` and prints the
``weights.json`` record (repo, file, the commit just created as pinned revision, sha256, size).
:func:`load_exported` reads a folder, or ``hf-hub:ORG/NAME[@revision]`` through ``hf_hub_download``.
"""
from __future__ import annotations

import inspect
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..model import SADCL
from .._atomic import atomic_write_text
from .loading import CONFIG_KEY, checkpoint_metadata, export_state_dict, load_pretrained
from .weights import (
    CheckpointFileError,
    ChecksumError,
    WeightsDownloadError,
    WeightsRecord,
    read_safetensors,
    save_safetensors,
    sha256_file,
    verify_file,
)

__all__ = [
    "CONFIG_NAME",
    "ONNX_NAME",
    "WEIGHTS_NAME",
    "PublishError",
    "export_model",
    "export_onnx",
    "is_exported_name",
    "load_exported",
    "model_from_source",
    "push_to_hub",
]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
ONNX_NAME = "model.onnx"
EXPORT_FORMAT = "sadcl-export"
EXPORT_FORMAT_VERSION = 1
HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"

_COMMIT_RE = re.compile(r"[0-9a-f]{40}")
_CONSTRUCTOR_KEYS = frozenset(p for p in inspect.signature(SADCL.__init__).parameters if p != "self")
# Keys of pretrained_cfg that describe how images must be prepared (see sadcl.inference.preprocess).
_PREPROCESSING_KEYS = ("input_size", "mean", "std", "interpolation", "resize")
_ARXIV = "2307.09715"
_CITATION = """@inproceedings{ma2023sadcl,
  title     = {Semantic-Aware Dual Contrastive Learning for Multi-label Image Classification},
  author    = {Ma, Leilei and Sun, Dengdi and Wang, Lei and Zhao, Haifeng and Luo, Bin},
  booktitle = {Proceedings of the 26th European Conference on Artificial Intelligence (ECAI 2023)},
  year      = {2023},
  eprint    = {2307.09715},
  archivePrefix = {arXiv}
}"""


class PublishError(RuntimeError):
    """An export folder could not be pushed to the Hub."""


# ----------------------------------------------------------------------------- export
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
) -> dict[str, Any]:
    """Write ``model.safetensors``, ``config.json`` and a ``README.md`` model card into ``out_dir``.

    Args:
        model: the SADCL model (its ``config`` and ``pretrained_cfg`` describe it).
        out_dir: the export folder (created; our files in it are overwritten).
        metrics: results of *these* weights, in percent (``{"mAP": 85.6, "CF1": ...}``). When ``None``, the
            variant's recorded results (``pretrained_cfg["metrics"]``) are used with their source.
        metrics_source: where ``metrics`` come from (default: "measured on these weights" when given).
        recipe: how the weights were obtained: a mapping (rendered as a list) or free text.
        repo_id: the Hub repository the folder is meant for (used in the card's usage snippet).
        license: a Hub licence id for the card (``"apache-2.0"``...); omitted when ``None``.
        onnx: also write ``model.onnx`` (:func:`export_onnx`, needs ``pip install sadcl[onnx]``).

    Returns:
        The ``config.json`` content.
    """
    if not isinstance(model, SADCL):
        raise TypeError(f"export_model needs a sadcl SADCL model, got {type(model).__name__}")
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    weights_path = out / WEIGHTS_NAME
    digest = save_safetensors(export_state_dict(model), weights_path, checkpoint_metadata(model))

    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    variant = _variant_of(model, cfg)
    if variant is None and cfg.get("architecture") in _variant_names():
        # A variant built with architecture or label overrides: its description and results are not this model's.
        cfg = {k: v for k, v in cfg.items() if k not in ("dataset", "description", "metrics", "metrics_source")}
    if metrics is None:
        metrics, metrics_source = cfg.get("metrics"), metrics_source or cfg.get("metrics_source")
    elif metrics_source is None:
        metrics_source = "measured on these weights"
    config: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_FORMAT_VERSION,
        "library_name": "sadcl",
        "sadcl_version": _sadcl_version(),
        "variant": variant,
        "architecture": dict(model.config),
        "num_classes": model.num_classes,
        "label_names": list(model.label_names),
        "preprocessing": _preprocessing(model, cfg),
        "dataset": cfg.get("dataset"),
        "description": cfg.get("description"),
        "metrics": dict(metrics) if metrics else None,
        "metrics_source": metrics_source if metrics else None,
        "recipe": dict(recipe) if isinstance(recipe, Mapping) else recipe,
        "weights": {"filename": WEIGHTS_NAME, "sha256": digest, "size": weights_path.stat().st_size},
        "onnx": None,
    }
    if onnx:
        onnx_path = export_onnx(model, out / ONNX_NAME)
        config["onnx"] = {"filename": ONNX_NAME, "input": "images", "output": "logits",
                          "input_size": config["preprocessing"]["input_size"], "dynamic_axes": ["batch"],
                          "sha256": sha256_file(onnx_path), "size": onnx_path.stat().st_size}
    elif (out / ONNX_NAME).exists():
        (out / ONNX_NAME).unlink()  # from an earlier export: it would be published beside different weights
    atomic_write_text(out / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
    atomic_write_text(out / CARD_NAME, model_card(config, repo_id=repo_id, license=license))
    return config


def _variant_names() -> frozenset[str]:
    from .variants import VARIANTS

    return frozenset(VARIANTS)


def _variant_of(model: SADCL, cfg: Mapping[str, Any]) -> str | None:
    """The variant ``model`` was built as, if it has exactly its architecture, resolution and label set."""
    from .variants import VARIANTS, read_labels

    name = cfg.get("architecture")
    v = VARIANTS.get(name) if isinstance(name, str) else None
    if v is None:
        return None
    same = (all(model.config.get(k) == value for k, value in v.arch.items())
            and model.config["img_size"] == v.img_size and model.label_names == list(read_labels(v.labels)))
    return name if same else None


def _preprocessing(model: SADCL, cfg: Mapping[str, Any]) -> dict[str, Any]:
    size = model.config["img_size"]
    pre: dict[str, Any] = {"input_size": [3, size, size], "mean": [0.485, 0.456, 0.406],
                           "std": [0.229, 0.224, 0.225], "interpolation": "bilinear",
                           "resize": "squash (Resize((s, s)))"}
    for key in _PREPROCESSING_KEYS:
        if key in cfg:
            pre[key] = list(cfg[key]) if isinstance(cfg[key], (tuple, list)) else cfg[key]
    return pre


def _sadcl_version() -> str:
    from sadcl import __version__

    return str(__version__)


# ----------------------------------------------------------------------------- model card
def model_card(config: Mapping[str, Any], *, repo_id: str | None = None, license: str | None = None) -> str:
    """The Hub model card (``README.md``) of an export, from its ``config.json`` content."""
    from huggingface_hub import EvalResult, ModelCardData

    name = repo_id.split("/")[-1] if repo_id else (config.get("variant") or "sadcl")
    arch = config["architecture"]
    metrics = config.get("metrics") or {}
    dataset = config.get("dataset")
    eval_results = [
        EvalResult(task_type="image-classification", task_name="Multi-label image classification",
                   dataset_type=_slug(dataset), dataset_name=dataset, metric_type=_slug(key), metric_name=key,
                   metric_value=float(value))
        for key, value in metrics.items()
    ] if dataset else []
    card_data = ModelCardData(
        library_name="sadcl", pipeline_tag="image-classification", license=license,
        tags=["sadcl", "image-classification", "multi-label-image-classification", "pytorch", "safetensors",
              f"backbone:{arch['backbone']}"],
        model_name=name if eval_results else None, eval_results=eval_results or None,
    )
    pre = config["preprocessing"]
    where = f"{HF_HUB_PREFIX}{repo_id}" if repo_id else "path/to/this/folder"
    sections = [
        f"---\n{card_data.to_yaml()}\n---",
        f"# {name}\n\n{config.get('description') or 'A SADCL multi-label image classifier.'}\n\n"
        f"SADCL (Semantic-Aware Dual Contrastive Learning) decodes one label query per class against the image's "
        f"feature grid (semantic-aware representation learning) and trains those label-level embeddings with "
        f"sample-to-sample (SSCL) and prototype-to-sample (PSCL) contrastive losses; see the paper "
        f"([arXiv {_ARXIV}](https://arxiv.org/abs/{_ARXIV})).",
        "## Model details\n\n" + _table([
            ("Backbone", f"`{arch['backbone']}`"),
            ("Transformer", f"{arch['num_encoder_layers']} encoder / {arch['num_decoder_layers']} decoder layers, "
                            f"width {arch['hidden_dim']}, {arch['num_heads']} heads, FFN {arch['ffn_dim']}"),
            ("Labels", f"{config['num_classes']}" + (f" ({dataset})" if dataset else "")),
            ("Input", f"{pre['input_size'][1]}×{pre['input_size'][2]} RGB, {pre['resize']}, "
                      f"{pre['interpolation']}, mean {pre['mean']}, std {pre['std']}"),
            ("Outputs", "one logit per label; apply a sigmoid for independent per-label probabilities"),
            ("Weights", f"`{config['weights']['filename']}`, sha256 `{config['weights']['sha256']}`"),
        ]),
        "## Usage\n\n```python\nimport sadcl\nfrom sadcl.zoo.export import load_exported\n\n"
        f"model = load_exported(\"{where}\")\n"
        "print(sadcl.predict(model, \"photo.jpg\", top_k=3))  # {label: probability}\n```"
        + ("\n\nWith ONNX Runtime (`model.onnx`, input `images` [batch, 3, H, W] normalised as above, "
           "output `logits`):\n\n```python\nimport onnxruntime as ort\n\n"
           "session = ort.InferenceSession(\"model.onnx\")\n"
           "logits = session.run([\"logits\"], {\"images\": batch})[0]\n```" if config.get("onnx") else ""),
        "## Results\n\n" + (
            _table([(k, str(float(v))) for k, v in metrics.items()], header=("Metric (%)", "Value"))
            + f"\n\nSource: {config.get('metrics_source') or 'not stated'}." if metrics
            else "No results are recorded for these weights."),
        "## Labels\n\n" + _labels(config["label_names"]),
        "## Training recipe\n\n" + _recipe(config.get("recipe")),
        f"## Citation\n\n```bibtex\n{_CITATION}\n```",
    ]
    return "\n\n".join(sections) + "\n"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _table(rows: list[tuple[str, str]], header: tuple[str, str] = ("", "")) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


def _labels(names: list[str]) -> str:
    listing = "\n".join(f"{i}\t{name}" for i, name in enumerate(names))
    return (f"{len(names)} labels; output `i` scores label `i`.\n\n<details>\n<summary>Label list</summary>\n\n"
            f"```text\n{listing}\n```\n\n</details>")


def _recipe(recipe: Mapping[str, Any] | str | None) -> str:
    if recipe is None:
        return "Not recorded with this export."
    if isinstance(recipe, str):
        return recipe
    return "\n".join(f"- **{key}**: {value}" for key, value in recipe.items())


# ----------------------------------------------------------------------------- ONNX
def export_onnx(
    model: SADCL,
    path: str | os.PathLike,
    *,
    img_size: int | None = None,
    opset: int = 17,
) -> Path:
    """Export ``model``'s logits to ONNX: input ``images`` ``[batch, 3, S, S]``, output ``logits`` ``[batch, C]``.

    The batch dimension is dynamic; the image size is fixed (``img_size``, default the model's), because the
    position encoding is traced for one feature-map size. Label names, mean/std and the model config are
    stored in the ONNX metadata. Needs ``pip install sadcl[onnx]``.
    """
    try:
        import onnx
    except ImportError as e:
        raise ImportError("ONNX export needs the onnx package: pip install 'sadcl[onnx]'") from e
    import warnings

    size = int(img_size or model.config["img_size"])
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    param = next(model.parameters())
    dummy = torch.zeros(1, 3, size, size, device=param.device, dtype=param.dtype)
    kwargs: dict[str, Any] = {}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        # The TorchScript exporter: exact, fast, any opset. torch 2.9+'s default dynamo exporter emits
        # Split(num_outputs), invalid below opset 18, and takes ~10x longer on this model.
        kwargs["dynamo"] = False
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            # The legacy exporter is chosen on purpose (above): its deprecation notices are not for our users.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                model, (dummy,), str(path), input_names=["images"], output_names=["logits"],
                dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, opset_version=opset, **kwargs,
            )
    finally:
        model.train(was_training)

    proto = onnx.load(str(path))
    # The tracer leaves the label axis symbolic; it is the model's label count.
    label_axis = proto.graph.output[0].type.tensor_type.shape.dim[1]
    label_axis.ClearField("dim_param")
    label_axis.dim_value = model.num_classes
    cfg = getattr(model, "pretrained_cfg", None) or {}
    meta = {"label_names": json.dumps(model.label_names), "sadcl_config": json.dumps(model.config),
            "mean": json.dumps(list(cfg.get("mean", (0.485, 0.456, 0.406)))),
            "std": json.dumps(list(cfg.get("std", (0.229, 0.224, 0.225)))),
            "input_size": json.dumps([3, size, size]), "sadcl_version": _sadcl_version()}
    onnx.helper.set_model_props(proto, meta)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return path


# ----------------------------------------------------------------------------- loading
def is_exported_name(name: str | os.PathLike) -> bool:
    """True when ``name`` designates an export: ``hf-hub:…``, ``local-dir:…``, or a folder holding a
    ``config.json`` (unless ``name`` is also a variant name: ``./name`` then selects the folder)."""
    text = os.fspath(name)
    if text.startswith((HF_HUB_PREFIX, LOCAL_DIR_PREFIX)):
        return True
    return text not in _variant_names() and (Path(text).expanduser() / CONFIG_NAME).is_file()


def load_exported(
    name_or_path: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    **overrides: Any,
) -> SADCL:
    """Build and strictly load an exported SADCL model.

    Args:
        name_or_path: an export folder (optionally written ``local-dir:PATH``), or ``hf-hub:ORG/NAME`` /
            ``hf-hub:ORG/NAME@REVISION`` (files fetched with ``hf_hub_download``, so ``HF_ENDPOINT``,
            ``HF_HUB_OFFLINE`` and the Hub cache behave as usual; ``config.json`` and the weights are taken from
            the same commit).
        cache_dir: Hub cache directory (default: ``HF_HUB_CACHE``).
        **overrides: SADCL constructor keywords that replace the exported ones, e.g. ``num_classes`` or
            ``label_names`` to fine-tune on another label set (only the label-specific parameters are then
            re-initialised, see :func:`sadcl.zoo.loading.load_pretrained`).

    The weights' sha256 is checked against ``config.json``.
    """
    text = os.fspath(name_or_path)
    if text.startswith(HF_HUB_PREFIX):
        repo_id, revision = _parse_hub_name(text)
        config_path, weights_path, commit = _download_export(repo_id, revision, cache_dir)
        source = f"{HF_HUB_PREFIX}{repo_id}@{commit or revision or 'main'}"
    else:
        folder = Path(text[len(LOCAL_DIR_PREFIX):] if text.startswith(LOCAL_DIR_PREFIX) else text).expanduser()
        if not folder.is_dir():
            raise CheckpointFileError(f"export folder not found: {folder} (expected {CONFIG_NAME} and {WEIGHTS_NAME})")
        config_path, weights_path, commit, repo_id = folder / CONFIG_NAME, folder / WEIGHTS_NAME, None, None
        source = str(folder)
        for needed in (config_path, weights_path):
            if not needed.is_file():
                raise CheckpointFileError(f"{folder} is not a SADCL export: {needed.name} is missing")
    config = _read_export_config(config_path)
    _verify_export_weights(weights_path, config, source)

    args = dict(config["architecture"])
    if "label_names" in overrides and "num_classes" not in overrides:
        args.pop("num_classes", None)  # the new names define the count
    elif overrides.get("num_classes", config["num_classes"]) != config["num_classes"] and "label_names" not in overrides:
        args.pop("label_names", None)  # a new label set of that size, named by index
    args.update(overrides)
    unknown = sorted(set(args) - _CONSTRUCTOR_KEYS)
    if unknown:
        raise ValueError(f"{source}: unknown SADCL argument(s) {unknown} (config.json from a newer sadcl? "
                         f"upgrade sadcl); valid: {sorted(_CONSTRUCTOR_KEYS)}")
    model = SADCL(**args)
    state_dict, metadata = read_safetensors(weights_path)
    load_pretrained(model, state_dict, metadata, source=source)
    model.pretrained_cfg = _pretrained_cfg(model, config, source, repo_id, commit)
    return model


def _parse_hub_name(text: str) -> tuple[str, str | None]:
    rest = text[len(HF_HUB_PREFIX):]
    repo_id, at, revision = rest.partition("@")
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts) or (at and not revision):
        raise ValueError(f"{text!r} is not a Hub model name: write hf-hub:ORG/NAME or hf-hub:ORG/NAME@REVISION")
    return repo_id, revision or None


def _download_export(
    repo_id: str, revision: str | None, cache_dir: str | os.PathLike | None
) -> tuple[Path, Path, str | None]:
    from huggingface_hub import hf_hub_download

    kwargs: dict[str, Any] = dict(revision=revision, cache_dir=cache_dir, library_name="sadcl",
                                  library_version=_sadcl_version())
    commit = None
    paths = []
    for filename in (CONFIG_NAME, WEIGHTS_NAME):
        try:
            path = Path(hf_hub_download(repo_id, filename, **kwargs))
        except Exception as e:  # every failure becomes one clear error; the original stays as __cause__
            raise WeightsDownloadError(_hub_error_message(repo_id, filename, kwargs["revision"], e)) from e
        # The cache stores files under snapshots/<commit>/: fetch the weights from the config's commit,
        # even if the branch moves between the two downloads.
        if commit is None and _COMMIT_RE.fullmatch(path.parent.name):
            commit = kwargs["revision"] = path.parent.name
        paths.append(path)
    return paths[0], paths[1], commit


def _hub_error_message(repo_id: str, filename: str, revision: str | None, error: BaseException) -> str:
    from huggingface_hub import constants, errors

    what = (f"{filename} of the SADCL export {HF_HUB_PREFIX}{repo_id} (revision {revision or 'main'}) "
            f"from {constants.ENDPOINT}")
    entry_missing = getattr(errors, "RemoteEntryNotFoundError", getattr(errors, "EntryNotFoundError", ()))
    if isinstance(error, errors.LocalEntryNotFoundError):
        return (f"cannot load {what}: the Hub could not be reached (or HF_HUB_OFFLINE is set) and the file is not "
                f"in the cache. Check the network/HF_ENDPOINT, or download the export folder and load it by path.")
    if isinstance(error, errors.RepositoryNotFoundError):
        return f"cannot download {what}: the repository does not exist (or is private and no valid token was sent)."
    if isinstance(error, errors.RevisionNotFoundError):
        return f"cannot download {what}: the revision does not exist in {repo_id}."
    if isinstance(error, entry_missing):
        return f"cannot download {what}: the repository has no {filename}; is it a SADCL export (sadcl export)?"
    return f"cannot download {what}: {type(error).__name__}: {error}"


def _read_export_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointFileError(f"{path} is not a readable JSON file ({e})") from e
    if not isinstance(config, dict) or config.get("format") != EXPORT_FORMAT:
        raise CheckpointFileError(f"{path} is not a SADCL export config (no \"format\": \"{EXPORT_FORMAT}\")")
    if config.get("format_version", 0) > EXPORT_FORMAT_VERSION:
        raise CheckpointFileError(f"{path} was written by a newer sadcl (format_version "
                                  f"{config['format_version']}); upgrade sadcl")
    for key in ("architecture", "weights", "preprocessing"):
        if not isinstance(config.get(key), dict):
            raise CheckpointFileError(f"{path}: the entry {key!r} is missing or not an object")
    return config


def _verify_export_weights(path: Path, config: Mapping[str, Any], source: str) -> None:
    record = config["weights"]
    # Hub files: remember the verification next to the cache's repo folder (models--org--name), as weights.py does.
    index_dir = path.parents[2] if path.parent.parent.name == "snapshots" else None
    try:
        verify_file(path, record["sha256"], record["size"], index_dir=index_dir)
    except ChecksumError as e:
        if index_dir is not None:
            from .weights import _evict

            _evict(path, index_dir)
            raise ChecksumError(f"{source}: the downloaded {WEIGHTS_NAME} is corrupt ({e}); it was removed from "
                                "the cache, run again to download it afresh.") from None
        raise ChecksumError(f"{source}: {WEIGHTS_NAME} does not match config.json ({e}); "
                            "export the model again.") from None


def _pretrained_cfg(model: SADCL, config: Mapping[str, Any], source: str, repo_id: str | None,
                    commit: str | None) -> dict[str, Any]:
    pre = config["preprocessing"]
    cfg = dict(model.pretrained_cfg)
    cfg.update(
        architecture=config.get("variant") or "sadcl", source=source, dataset=config.get("dataset"),
        description=config.get("description"), metrics=config.get("metrics"),
        metrics_source=config.get("metrics_source"), recipe=config.get("recipe"),
        mean=tuple(pre.get("mean", cfg["mean"])), std=tuple(pre.get("std", cfg["std"])),
        interpolation=pre.get("interpolation", cfg["interpolation"]), resize=pre.get("resize"),
        input_size=tuple(pre.get("input_size", cfg["input_size"])),
        weights=dict(hf_hub_id=repo_id, filename=WEIGHTS_NAME, revision=commit, sha256=config["weights"]["sha256"],
                     size=config["weights"]["size"]),
        has_weights=True,
    )
    if model.label_names != config["label_names"]:  # a head change: the exported preprocessing still applies
        cfg.update(metrics=None, metrics_source=None)
    return cfg


def model_from_source(source: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None) -> SADCL:
    """A model from what a user names on the command line: an export (``hf-hub:``, ``local-dir:``, a folder),
    a ``.safetensors`` checkpoint carrying its config, or a variant name with published weights."""
    text = os.fspath(source)
    if is_exported_name(text):
        return load_exported(text, cache_dir=cache_dir)
    if text.endswith(".safetensors"):
        state_dict, metadata = read_safetensors(text)
        if CONFIG_KEY not in metadata:
            raise CheckpointFileError(
                f"{text} does not record its architecture (no {CONFIG_KEY!r} header entry); load it with "
                "create_model(<variant>, checkpoint_path=...) instead"
            )
        model = SADCL(**json.loads(metadata[CONFIG_KEY]))
        load_pretrained(model, state_dict, metadata, source=text)
        return model
    from .variants import create_model

    return create_model(text, pretrained=True, cache_dir=cache_dir)


# ----------------------------------------------------------------------------- publishing
def push_to_hub(
    export_dir: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
) -> dict[str, Any]:
    """Upload an export folder to the Hub and return (and print) its ``weights.json`` record.

    Creates the repository if needed (``HfApi.create_repo(exist_ok=True)``), uploads the folder
    (``HfApi.upload_folder``) to ``revision`` (an existing branch; default ``main``) and pins the record to the
    commit that upload created (or, when nothing changed, the commit already there).

    Returns:
        ``{"hf_hub_id", "filename", "revision", "sha256", "size"}``, valid as a :class:`WeightsRecord`.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    folder = Path(export_dir).expanduser()
    config = _read_export_config(folder / CONFIG_NAME)
    weights = folder / WEIGHTS_NAME
    try:
        verify_file(weights, config["weights"]["sha256"], config["weights"]["size"])
    except (ChecksumError, CheckpointFileError) as e:
        raise PublishError(f"{folder} is not a consistent export ({e}); run `sadcl export` again") from None

    api = HfApi(token=token)
    message = commit_message or f"Upload SADCL export ({config.get('variant') or 'sadcl'})"
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), revision=revision, commit_message=message)
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        hint = (" Log in with `hf auth login` or pass a write token (token=/--token)." if status in (401, 403) else "")
        raise PublishError(f"could not push {folder} to {repo_id} on {api.endpoint}: {e}.{hint}") from e

    record = dict(hf_hub_id=repo_id, filename=WEIGHTS_NAME, revision=info.oid,
                  sha256=config["weights"]["sha256"], size=config["weights"]["size"])
    WeightsRecord(**record)  # validates: a pinned 40-hex commit, a sha256, a size
    name = config.get("variant") or repo_id.split("/")[-1]
    print(f"Pushed {folder} to {api.endpoint}/{repo_id} at commit {info.oid}. Record for weights.json:")
    print(json.dumps({name: record}, indent=2))
    return record
