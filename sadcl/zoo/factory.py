"""One door in: :func:`create_model` resolves every kind of source into a SADCL model.

Sources (decided here and nowhere else, as open_clip's ``factory.py`` does):

* a registered variant, ``"sadcl_coco_448"`` (with its published weights when ``pretrained=True``, or a local
  ``checkpoint_path``);
* a ``.safetensors`` file written by sadcl (training's ``best.safetensors``, ``sadcl convert`` output, an
  export's ``model.safetensors``): its header says everything;
* an export folder (``config.json`` + ``model.safetensors``), also as timm's ``local-dir:PATH``;
* ``hf-hub:ORG/NAME[@revision]``: an export on the Hugging Face Hub.

Architecture, labels and preprocessing come from the checkpoint. The label-specific parameters are
re-initialised only when the caller asks for another label set (``num_classes``/``label_names``), never as a
side effect of naming a variant: a variant named together with a file that records another architecture or
label set is an error naming both. Every variant is also registered with timm (with timm pretrained configs),
so ``timm.create_model("sadcl_coco_448")``, ``timm.create_model("hf-hub:ORG/NAME")`` and
``timm.create_model("local-dir:PATH")`` come here too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from timm.models import PretrainedCfg, generate_default_cfgs, register_model

from ..data.preprocessing import Preprocessing, PreprocessingError
from ..model import CONSTRUCTOR_KEYS, SADCL
from . import export as _export
from .header import ARCHITECTURE_KEYS, HEADER_KEY, WeightsHeader, canonical_json, parse_header
from .loading import load_pretrained
from .safetensors_io import read_safetensors, read_safetensors_metadata
from .variants import VARIANTS, check_name, list_pretrained, variant_pretrained_cfg, weights_table
from .weights import CheckpointFileError, NoPretrainedWeightsError, WeightsRecord, resolve_checkpoint

__all__ = [
    "DEFAULT_MODEL",
    "HF_HUB_PREFIX",
    "LOCAL_DIR_PREFIX",
    "ModelSourceError",
    "create_model",
    "describe_source",
    "model_from_args",
]

DEFAULT_MODEL = "sadcl_fashion_mosaic"  # the shipped model: what the commands use when no model is named
HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"
_CONSTRUCTOR_KEYS = frozenset(CONSTRUCTOR_KEYS)
_TIMM_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "pretrained_model_args")
_PREPROCESSING_KEYS = ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode")


class ModelSourceError(ValueError):
    """A model source cannot be used as given (a variant and a file that disagree, a bad overlay...)."""


@dataclass
class _Source:
    """What a source resolves to before anything is built."""

    config: dict[str, Any]  # SADCL constructor config
    preprocessing: Preprocessing
    variant: str | None  # the registered variant it descends from
    source: str | None  # where the weights come from, as a user would write it
    weights: Path | None = None  # the safetensors file to load
    recorded: str | None = None  # what the file says it is, for error messages
    meta: dict[str, Any] = field(default_factory=dict)  # more pretrained_cfg entries (dataset, metrics...)


# ----------------------------------------------------------------------------- the factory
def create_model(
    source: str | os.PathLike,
    pretrained: bool = False,
    *,
    checkpoint_path: str | os.PathLike | None = None,
    num_classes: int | None = None,
    label_names: list[str] | tuple[str, ...] | None = None,
    cache_dir: str | os.PathLike | None = None,
    pretrained_cfg_overlay: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> SADCL:
    """Build a SADCL model from a variant name, a sadcl ``.safetensors`` file, an export folder, ``local-dir:``
    or ``hf-hub:ORG/NAME[@rev]``.

    Args:
        source: see the module docstring.
        pretrained: for a variant, load its published checkpoint (``weights.json``; raises if none exists).
            Files, folders and Hub exports always load their weights.
        checkpoint_path: for a variant, a local ``.safetensors`` file to load instead of the published one.
        num_classes, label_names: another label set. Everything else loads strictly; only the label queries,
            classifier and prototypes are re-initialised (a :class:`~sadcl.zoo.loading.HeadChangeWarning`).
        cache_dir: Hub cache directory (default ``HF_HUB_CACHE``).
        pretrained_cfg_overlay: timm's overlay: ``file`` loads that checkpoint; preprocessing keys
            (``mean``, ``std``, ``interpolation``, ``input_size``) replace the recorded ones.
        **overrides: other :class:`SADCL` constructor keywords (``img_size``, ``dropout``...).
    """
    for key in _TIMM_KWARGS:  # timm.create_model passes these; the variant table is ours
        overrides.pop(key, None)
    overlay = dict(pretrained_cfg_overlay or {})
    if overlay.get("file") is not None:
        if checkpoint_path is not None:
            raise ModelSourceError(
                "give the checkpoint either as checkpoint_path= or as pretrained_cfg_overlay['file']"
            )
        checkpoint_path = overlay.pop("file")
    unknown = sorted(set(overrides) - _CONSTRUCTOR_KEYS)
    if unknown:
        raise TypeError(
            f"create_model({os.fspath(source)!r}) got unknown keyword(s) {unknown}; valid: "
            f"{sorted(_CONSTRUCTOR_KEYS | {'checkpoint_path', 'cache_dir'})}"
        )
    src = _resolve(
        source,
        pretrained=pretrained,
        checkpoint_path=checkpoint_path,
        cache_dir=cache_dir,
        head_change=num_classes is not None or label_names is not None,
        arch={k: v for k, v in overrides.items() if k in ARCHITECTURE_KEYS},
    )
    return _build(src, num_classes=num_classes, label_names=label_names, overlay=overlay, overrides=overrides)


def model_from_args(
    model: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    *,
    default: str | None = DEFAULT_MODEL,
    **kwargs: Any,
) -> SADCL:
    """What a command's ``--model`` and ``--checkpoint`` mean, in one place for every command.

    ``--checkpoint FILE`` alone: the file describes itself. ``--model VARIANT --checkpoint FILE``: the variant's
    network with that file's weights (they must agree). ``--model SOURCE`` alone: a variant with its published
    weights, or a file, an export folder, ``local-dir:`` or ``hf-hub:``. Neither: ``default``.
    """
    if checkpoint is not None:
        if model is None:
            return create_model(checkpoint, **kwargs)
        return create_model(model, checkpoint_path=checkpoint, **kwargs)
    if model is None:
        if default is None:
            raise ModelSourceError("no model given: name a variant, a file or a folder (see `sadcl list`)")
        model = default
    return create_model(model, pretrained=True, **kwargs)


def model_from_header(header: Mapping[str, Any], where: str) -> SADCL:
    """The network a header describes (``WeightsHeader.to_json()``), randomly initialised: for a resumed run,
    whose weights come from its training checkpoint next."""
    parsed = parse_header({HEADER_KEY: canonical_json(dict(header))}, where)
    if parsed is None:  # cannot happen: the entry is there
        raise ModelSourceError(f"{where}: the training checkpoint's weights_header is empty")
    src = _Source(
        config=dict(parsed.config),
        preprocessing=parsed.preprocessing,
        variant=parsed.variant if parsed.variant in VARIANTS else None,
        source=parsed.source,
    )
    return _build(src, num_classes=None, label_names=None, overlay={}, overrides={})


def describe_source(source: str | os.PathLike) -> str:
    """The kind of ``source``: ``"variant"``, ``"file"``, ``"folder"`` or ``"hub"`` (raises when it is none)."""
    text = os.fspath(source)
    if text.startswith(HF_HUB_PREFIX):
        return "hub"
    if text.startswith(LOCAL_DIR_PREFIX):
        return "folder"
    if text in VARIANTS:
        return "variant"
    path = Path(text).expanduser()
    if path.is_dir():
        return "folder"
    if path.suffix == ".safetensors" or path.exists():
        return "file"
    if "/" in text or os.sep in text or text.startswith("."):  # meant as a path: say so, not "unknown model"
        raise ModelSourceError(
            f"no file or folder {text!r}; a model source is a variant name (see `sadcl list`), "
            "a .safetensors file, an export folder, local-dir:PATH or hf-hub:ORG/NAME"
        )
    check_name(text)  # raises, with suggestions
    raise AssertionError("unreachable: check_name raises for a name that is not a variant")


def _resolve(
    source: str | os.PathLike,
    *,
    pretrained: bool,
    checkpoint_path: str | os.PathLike | None,
    cache_dir: str | os.PathLike | None,
    head_change: bool,
    arch: Mapping[str, Any] | None = None,
) -> _Source:
    text = os.fspath(source)
    kind = describe_source(text)
    if kind == "variant":
        return _from_variant(
            text,
            pretrained=pretrained,
            checkpoint_path=checkpoint_path,
            cache_dir=cache_dir,
            head_change=head_change,
            arch=arch or {},
        )
    if checkpoint_path is not None:
        raise ModelSourceError(f"{text!r} already names the weights; checkpoint_path= goes with a variant name")
    if kind == "file":
        return _from_file(Path(text).expanduser())
    if kind == "folder":
        folder = Path(text[len(LOCAL_DIR_PREFIX) :] if text.startswith(LOCAL_DIR_PREFIX) else text).expanduser()
        return _from_export(_export.read_export(folder), source=str(folder))
    repo_id, revision = _parse_hub_name(text)
    from .hub import download_export  # the Hub client and its deadline hooks load only for hf-hub: sources

    export, commit = download_export(repo_id, revision, cache_dir)
    return _from_export(
        export, source=f"{HF_HUB_PREFIX}{repo_id}@{commit or revision or 'main'}", hub=(repo_id, commit)
    )


def _parse_hub_name(text: str) -> tuple[str, str | None]:
    rest = text[len(HF_HUB_PREFIX) :]
    repo_id, at, revision = rest.partition("@")
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts) or (at and not revision):
        raise ModelSourceError(f"{text!r} is not a Hub model name: write hf-hub:ORG/NAME or hf-hub:ORG/NAME@REVISION")
    return repo_id, revision or None


def _read_header(path: Path) -> WeightsHeader | None:
    return parse_header(read_safetensors_metadata(path), str(path))


def _from_variant(
    name: str,
    *,
    pretrained: bool,
    checkpoint_path: str | os.PathLike | None,
    cache_dir: str | os.PathLike | None,
    head_change: bool,
    arch: Mapping[str, Any],
) -> _Source:
    """A variant, with ``arch`` (architecture overrides the caller asked for) applied before any file is checked."""
    cfg = VARIANTS[name]
    record = weights_table().get(name)
    meta = variant_pretrained_cfg(name, record)
    src = _Source(
        config={**cfg.constructor_args(), **arch}, preprocessing=cfg.preprocessing, variant=name, source=None, meta=meta
    )
    if checkpoint_path is None and not pretrained:
        return src
    if checkpoint_path is None and record is None:
        raise NoPretrainedWeightsError(
            f"No checkpoint has been published for {name!r} (the authors released none, and weights.json has "
            f"no record for it). Variants with weights: {', '.join(list_pretrained()) or 'none'}. To get weights "
            f"for {name!r}: fine-tune one (`sadcl train`, see README), convert an authors'/Query2Label checkpoint "
            f"(`sadcl convert`), or load a checkpoint file you have."
        )
    path = resolve_checkpoint(record, variant=name, cache_dir=cache_dir, checkpoint_path=checkpoint_path)
    src.weights, src.source = path, name if checkpoint_path is None else str(path)
    if checkpoint_path is not None:  # someone else's weights: the variant's published results do not apply
        src.meta = {k: v for k, v in meta.items() if k not in ("metrics", "metrics_source", "weights")}
        src.meta["has_weights"] = True
    header = _read_header(path)
    if header is not None:
        _check_agrees(name, src.config, header, path, head_change)
        # what the weights were trained on: a head change is measured against these labels
        src.config.update(label_names=header.label_names, num_classes=len(header.label_names))
    return src


def _describe(config: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {config.get(k)}" for k in ("backbone", "hidden_dim", "num_decoder_layers"))


def _check_agrees(name: str, config: Mapping[str, Any], header: WeightsHeader, path: Path, head_change: bool) -> None:
    """A variant named with a file must be the file's architecture and (unless a head change is asked) labels."""
    recorded = header.variant or "a custom model"
    differ = [k for k in ARCHITECTURE_KEYS if header.config.get(k) != config.get(k)]
    if differ:
        raise ModelSourceError(
            f"{path} records {recorded} ({_describe(header.config)}), which is not the architecture of {name} "
            f"({_describe(config)}; differs in {', '.join(differ)}). Load the file on its own, without naming a "
            "variant: its header describes the model."
        )
    if not head_change and header.label_names != list(config["label_names"]):
        file_labels, ours = header.label_names, list(config["label_names"])
        raise ModelSourceError(
            f"{path} records {len(file_labels)} labels ({', '.join(file_labels[:3])}...) but {name} has "
            f"{len(ours)} ({', '.join(ours[:3])}...). Load the file on its own, without naming a variant, to use "
            "its labels; ask for a new label set explicitly (num_classes/label_names) to fine-tune."
        )


_PICKLE_SUFFIXES = (".pt", ".pth", ".tar", ".pkl", ".bin", ".ckpt")


def _from_file(path: Path) -> _Source:
    if path.suffix in _PICKLE_SUFFIXES:  # a clearer word than "not a valid safetensors file"
        raise CheckpointFileError(
            f"{path} is a PyTorch pickle file; sadcl loads models only from .safetensors files (never unpickling "
            "them): convert an authors'/Query2Label checkpoint with `sadcl convert`; a run's last.pt continues "
            "with `sadcl train --resume`, and its weights are in best.safetensors beside it."
        )
    header = _read_header(path)
    if header is None:
        raise CheckpointFileError(
            f"{path} does not describe itself (no sadcl header): name the variant it belongs to together with it "
            "(a variant plus this checkpoint file); an authors'/Query2Label checkpoint needs `sadcl convert` first."
        )
    pre = header.preprocessing
    variant = header.variant if header.variant in VARIANTS else None
    if header.format_version == 1 and variant is not None:
        # sadcl 0.1 files recorded no preprocessing: the variant they came from says how to normalise.
        v = VARIANTS[variant]
        pre = Preprocessing.square(
            header.config.get("img_size", v.img_size), mean=v.mean, std=v.std, interpolation=v.interpolation
        )
    meta: dict[str, Any] = {"training": header.training} if header.training else {}
    if variant is not None:
        meta.update(dataset=VARIANTS[variant].dataset)
    return _Source(
        config=dict(header.config),
        preprocessing=pre,
        variant=variant,
        source=str(path),
        weights=path,
        recorded=header.variant or "a custom SADCL model",
        meta=meta,
    )


def _from_export(export: _export.Export, *, source: str, hub: tuple[str, str | None] | None = None) -> _Source:
    header = _read_header(export.weights_path)
    if header is not None and header.config != export.config:
        raise CheckpointFileError(
            f"{source}: config.json and the header of {export.weights_path.name} describe "
            "different models; export the model again"
        )
    variant = export.variant if export.variant in VARIANTS else None
    meta = dict(export.meta)
    weights = dict(export.weights)
    if hub is not None:
        weights.update(hf_hub_id=hub[0], revision=hub[1])
    meta.update(weights=weights, has_weights=True)
    return _Source(
        config=dict(export.config),
        preprocessing=export.preprocessing,
        variant=variant,
        source=source,
        weights=export.weights_path,
        recorded=export.variant or "a custom SADCL model",
        meta=meta,
    )


# ----------------------------------------------------------------------------- building
def _build(
    src: _Source, *, num_classes: int | None, label_names: Any, overlay: Mapping[str, Any], overrides: Mapping[str, Any]
) -> SADCL:
    args = dict(src.config)
    stored_labels = list(args["label_names"])
    if label_names is not None:
        args["label_names"] = [str(n) for n in label_names]
        args.pop("num_classes", None)
        if num_classes is not None:
            args["num_classes"] = num_classes
    elif num_classes is not None and num_classes != len(stored_labels):
        args.pop("label_names")  # a new label set of that size, named by index
        args["num_classes"] = num_classes
    args.update(overrides)
    loading = src.weights is not None
    if loading:
        if overrides.get("pretrained_backbone"):
            raise ModelSourceError(
                "pretrained_backbone=True downloads ImageNet weights that the checkpoint would "
                "overwrite: drop it when loading a checkpoint"
            )
        args["pretrained_backbone"] = False
    # With a checkpoint, build on the meta device: nothing is allocated (or randomly initialised) before the
    # file's own tensors are checked against the architecture and assigned.
    with torch.device("meta") if loading else _backbone_download(args):
        model = SADCL(**args)
    head_change = model.label_names != stored_labels
    pre = _with_overrides(src.preprocessing, model.config["img_size"], overlay)
    if loading:
        state_dict, _ = read_safetensors(src.weights)
        load_pretrained(
            model, state_dict, source=str(src.source or src.weights), head_change=head_change, recorded=src.recorded
        )
    model.pretrained_cfg = _pretrained_cfg(src, model, pre, head_change, overrides, overlay)
    return model


def _backbone_download(args: Mapping[str, Any]) -> contextlib.AbstractContextManager[Any]:
    """timm fetches ImageNet backbone weights with hf_hub_download: within sadcl's deadline, failures in one line."""
    if not args.get("pretrained_backbone"):
        return contextlib.nullcontext()
    from .hub import download_deadline

    return download_deadline(f"the ImageNet weights of backbone {args['backbone']!r} (through timm)")


def _with_overrides(pre: Preprocessing, img_size: int, overlay: Mapping[str, Any]) -> Preprocessing:
    data = pre.to_dict()
    data["input_size"] = [3, img_size, img_size]  # img_size= overrides the resolution
    data.update({k: v for k, v in overlay.items() if k in _PREPROCESSING_KEYS})
    try:
        return Preprocessing.from_dict(data, "pretrained_cfg_overlay" if overlay else "preprocessing")
    except PreprocessingError as e:
        raise ModelSourceError(str(e)) from None


def _pretrained_cfg(
    src: _Source,
    model: SADCL,
    pre: Preprocessing,
    head_change: bool,
    overrides: Mapping[str, Any],
    overlay: Mapping[str, Any],
) -> dict[str, Any]:
    """timm's ``pretrained_cfg`` keys (so timm's data config and transforms work) plus sadcl's metadata."""
    cfg = dict(src.meta)
    variant = src.variant
    if variant is not None and any(model.config.get(k) != VARIANTS[variant].arch.get(k) for k in ARCHITECTURE_KEYS):
        variant = None  # architecture overrides: no longer that variant's network
    if head_change or any(k in overrides for k in ARCHITECTURE_KEYS):
        cfg.update(metrics=None, metrics_source=None)  # the recorded results belong to the recorded model
    cfg.update(pre.to_cfg())
    cfg.update({k: v for k, v in overlay.items() if k not in _PREPROCESSING_KEYS})
    cfg.update(
        architecture=variant or "sadcl",
        variant=variant,
        source=src.source,
        fixed_input_size=False,
        label_names=list(model.label_names),
        num_classes=model.num_classes,
        classifier="fc",
        has_weights=src.weights is not None,
    )
    if overrides or head_change:  # count what was built
        cfg["num_params"] = sum(p.numel() for p in model.parameters())
    cfg.setdefault("train_size", model.config["img_size"])
    return cfg


# ----------------------------------------------------------------------------- timm registration
_TIMM_CFG_FIELDS = frozenset(f.name for f in dataclasses.fields(PretrainedCfg))


def _timm_cfg(name: str, record: WeightsRecord | None) -> dict[str, Any]:
    """The variant's timm ``PretrainedCfg``: its ``pretrained_cfg`` restricted to timm's own fields, plus where its
    weights are (a packaged file, a Hub repo) so that ``timm.list_pretrained`` lists the variants that have some."""
    cfg = {k: v for k, v in variant_pretrained_cfg(name, record).items() if k in _TIMM_CFG_FIELDS}
    if record is not None:
        if record.packaged_path is not None:
            cfg["file"] = str(record.packaged_path)
        if record.has_hub:
            cfg.update(hf_hub_id=f"{record.hf_hub_id}@{record.revision}", hf_hub_filename=record.filename)
    return cfg


_table = weights_table()  # read once for every variant
default_cfgs = generate_default_cfgs({name: _timm_cfg(name, _table.get(name)) for name in VARIANTS})


def _timm_factory(name: str | None, pretrained: bool = False, **kwargs: Any) -> SADCL:
    """Entry point for timm: an ``hf-hub:``/``local-dir:`` source arrives as a ``pretrained_cfg`` naming it."""
    cfg = kwargs.pop("pretrained_cfg", None)
    stored = kwargs.pop("pretrained_model_args", None) or {}
    if isinstance(cfg, Mapping) and cfg.get("source") in ("hf-hub", "local-dir"):
        source = (HF_HUB_PREFIX + cfg["hf_hub_id"]) if cfg["source"] == "hf-hub" else LOCAL_DIR_PREFIX + cfg["file"]
        # timm copies config.json's model_args into the keywords: those describe the file, not a request.
        kwargs = {k: v for k, v in kwargs.items() if not (k in stored and stored[k] == v)}
        if not pretrained:
            return _architecture_only(source, kwargs)
        return create_model(source, **kwargs)
    if name is None:
        return SADCL(**{k: v for k, v in kwargs.items() if k not in ("pretrained_cfg_overlay", "cache_dir")})
    return create_model(name, pretrained, **kwargs)


def _architecture_only(source: str, kwargs: dict[str, Any]) -> SADCL:
    """timm's ``pretrained=False`` for a Hub/local export: the recorded architecture, randomly initialised."""
    src = _resolve(
        source, pretrained=False, checkpoint_path=None, cache_dir=kwargs.pop("cache_dir", None), head_change=False
    )
    src.weights = None
    return _build(
        src,
        num_classes=kwargs.pop("num_classes", None),
        label_names=kwargs.pop("label_names", None),
        overlay=kwargs.pop("pretrained_cfg_overlay", None) or {},
        overrides=kwargs,
    )


def _register(name: str | None, export_name: str) -> Any:
    def factory(pretrained: bool = False, **kwargs: Any) -> SADCL:
        return _timm_factory(name, pretrained, **kwargs)

    factory.__name__ = factory.__qualname__ = export_name
    factory.__module__ = __name__
    if name is not None:
        v = VARIANTS[name]
        factory.__doc__ = (
            f"SADCL {v.dataset} at {v.img_size} px. {v.description}\n\n"
            f"Args:\n    pretrained: load the checkpoint recorded in weights.json (raises if none is published).\n"
            f"    **kwargs: as sadcl.create_model (checkpoint_path=, num_classes=, label_names=, cache_dir=, "
            "constructor overrides)."
        )
    else:
        factory.__doc__ = "A SADCL model of any architecture (the constructor keywords); what custom exports name."
    return register_model(factory)


for _name in VARIANTS:
    globals()[_name] = _register(_name, _name)
sadcl = _register(None, "sadcl")
