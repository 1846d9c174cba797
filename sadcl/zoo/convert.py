"""The authors' SADCL and Query2Label checkpoints → our SADCL (and our safetensors files).

What the authors' training script saves (REFERENCE.md b.1-b.5): ``{'epoch', 'arch', 'state_dict',
'best_mAP', 'optimizer'}`` where ``state_dict`` may carry a DDP ``module.`` prefix. Its keys differ from
ours in four places only:

* ``backbone.0.body.<k>`` (torchvision ResNet inside a ``Joiner``) is timm's ``backbone.<k>``;
* ``backbone.1.pe`` is the sine position buffer for one input size: dropped, we recompute it for any size;
* ``memorybank`` ``[M, C, D]`` is training state (the per-position memory bank), not part of the network;
* ``prototype`` ``[1, C, D]`` is our ``prototypes`` ``[C, D]`` (the class prototypes of PSCL).

A Query2Label checkpoint is the same minus ``memorybank``, ``prototype`` and ``proj_head.*``: the
projection head and the prototypes then keep their initialisation (and must be trained, or the
prototypes recomputed, before SADCL fine-tuning). Everything else (transformer, label queries,
group-wise linear head) maps one to one.

Pickled checkpoints are read with ``torch.load(weights_only=True)`` only: a file that needs arbitrary
Python classes is refused, never loaded unsafely.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._files import open_regular
from .._text import printable
from ..model import SADCL
from .weights import CheckpointFileError

__all__ = [
    "ConversionReport",
    "OfficialCheckpointWarning",
    "checkpoint_filter_fn",
    "convert_checkpoint",
    "load_official_checkpoint",
    "read_checkpoint",
]

Checkpoint = str | os.PathLike | Mapping[str, Any]

# Keys of the authors' models that are not parameters of the network: why each one is dropped.
_DROPPED = {
    "backbone.1.pe": "sine position buffer for one input size; recomputed for the input actually seen",
    "memorybank": "training state (memory bank of label-level embeddings); re-created by sadcl.train",
}
_TOP_LEVEL_STATE = ("state_dict", "model")  # where the authors' and Query2Label's scripts put the weights
# Left at their initialisation when a Query2Label checkpoint (no contrastive parts) is loaded.
_SADCL_ONLY_PREFIXES = ("proj_head.", "prototypes")


class OfficialCheckpointWarning(UserWarning):
    """Something of an authors'/Query2Label checkpoint was not loaded (see the :class:`ConversionReport`)."""


@dataclass
class ConversionReport:
    """What :func:`load_official_checkpoint` did with every key.

    Attributes:
        source: file name (or ``"<mapping>"``).
        kind: ``"sadcl"`` (authors' SADCL layout) or ``"query2label"`` (no projection head, no prototypes).
        loaded: model keys that received a checkpoint tensor.
        dropped: checkpoint keys deliberately not loaded, with the reason.
        initialised: model keys left at their initialisation on purpose (projection head and prototypes of a
            Query2Label checkpoint).
        unexpected: checkpoint keys that map to no model key.
        missing: model keys the checkpoint does not provide (other than ``initialised``).
        mismatched: ``"key: checkpoint (…) vs model (…)"`` for shape differences.
        extras: the checkpoint's other top-level entries (``epoch``, ``best_mAP``, ``arch`` …), as plain values.
        notes: anything else worth knowing (e.g. the input size the position buffer was made for).
    """

    source: str
    kind: str = "sadcl"
    loaded: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)
    initialised: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every model key was loaded or deliberately initialised and nothing was left unmapped."""
        return not (self.unexpected or self.missing or self.mismatched)

    def __str__(self) -> str:
        # Key names come from the file: escaped, so that printing the report cannot drive the terminal.
        lines = [f"{printable(self.source)}: {self.kind} checkpoint, {len(self.loaded)} tensors loaded"]
        if self.dropped:
            reasons = "; ".join(f"{k} ({why})" for k, why in self.dropped.items())
            lines.append(f"  dropped ({len(self.dropped)}): {reasons}")
        for title, keys in (
            ("left at initialisation", self.initialised),
            ("unmapped checkpoint keys", self.unexpected),
            ("missing model keys", self.missing),
            ("shape mismatches", self.mismatched),
        ):
            if keys:
                lines.append(f"  {title} ({len(keys)}): {', '.join(printable(k) for k in keys)}")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


# ----------------------------------------------------------------------------- reading
MAX_CHECKPOINT_BYTES_ENV = "SADCL_MAX_CHECKPOINT_BYTES"
DEFAULT_MAX_CHECKPOINT_BYTES = 32 << 30  # 32 GiB of tensors: ten times the largest published SADCL checkpoint
# torch.save stores the records of its zip archive uncompressed, so what they declare is about what they
# take on disk. Declaring more than this multiple of the file's size (plus room for the headers of tiny
# records) is a zip bomb: refused before anything is decompressed.
_MAX_EXPANSION = 4
_EXPANSION_SLACK = 1 << 20
_ZIP_MAGIC = b"PK\x03\x04"  # how torch.load itself tells its zip format from a legacy pickle
_PICKLE_PROTO = 0x80  # first byte of every pickle of protocol >= 2 (torch.save's legacy format)


def read_checkpoint(path: str | os.PathLike, *, max_bytes: int | None = None) -> Mapping[str, Any]:
    """Read a ``.pth``/``.pth.tar``/``.pkl`` (``torch.save``) or ``.safetensors`` checkpoint onto the CPU.

    Pickles are read with ``torch.load(weights_only=True)``: only tensors, containers and plain values
    (plus ``argparse.Namespace``, which training scripts save as their arguments) are allowed. Anything
    else is refused with :class:`CheckpointFileError`; there is no unsafe fallback.

    Before anything is decompressed, the sizes the zip archive declares are checked: more than
    ``4 x`` the file's size is a zip bomb, more than ``max_bytes`` (default: the environment variable
    ``SADCL_MAX_CHECKPOINT_BYTES``, else 32 GiB) is refused as too large. Only regular files are opened
    (a FIFO or device is refused, never read).
    """
    path = Path(path).expanduser()
    if path.suffix == ".safetensors":
        from .safetensors_io import read_safetensors

        return read_safetensors(path)[0]
    limit = _max_checkpoint_bytes(max_bytes)
    with open_regular(path, "checkpoint file", CheckpointFileError) as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(16)
        f.seek(0)
        if head.startswith(_ZIP_MAGIC):
            _check_zip_sizes(f, size, path, limit)
            f.seek(0)
        elif not head or head[0] != _PICKLE_PROTO:
            raise CheckpointFileError(
                f"{path} is not a readable PyTorch checkpoint: it is neither a torch.save zip archive nor a pickle "
                f"({_looks_like(head, size)}). sadcl reads files written by torch.save, or .safetensors files."
            )
        elif size > limit:  # a legacy pickle stores its tensors uncompressed, after the pickle
            raise _too_large(path, size, limit)
        return _torch_load(f, path)


def _max_checkpoint_bytes(max_bytes: int | None) -> int:
    """``max_bytes``, else ``$SADCL_MAX_CHECKPOINT_BYTES``, else the default; a positive integer."""
    if max_bytes is not None:
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
            raise ValueError(f"max_bytes must be a positive number of bytes, got {max_bytes!r}")
        return max_bytes
    text = os.environ.get(MAX_CHECKPOINT_BYTES_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_CHECKPOINT_BYTES
    if not text.isdigit() or int(text) <= 0:
        raise ValueError(f"{MAX_CHECKPOINT_BYTES_ENV} must be a positive number of bytes, got {text!r}")
    return int(text)


def _too_large(path: Path, declared: int, limit: int) -> CheckpointFileError:
    return CheckpointFileError(
        f"{path} holds {declared} bytes of tensors, more than the limit of {limit} bytes; if you trust the "
        f"file, set the environment variable {MAX_CHECKPOINT_BYTES_ENV} to a larger number of bytes."
    )


def _check_zip_sizes(f: Any, size: int, path: Path, limit: int) -> None:
    """Refuse a zip archive whose members declare more than the file can hold (read: its directory only)."""
    try:
        with zipfile.ZipFile(f) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as e:
        raise CheckpointFileError(
            f"{path} is not a readable PyTorch checkpoint (a damaged zip archive: {_first_line(e)}); "
            "it may be truncated. Download or save it again."
        ) from None
    if declared > _MAX_EXPANSION * size + _EXPANSION_SLACK:
        raise CheckpointFileError(
            f"{path} declares {declared} bytes of content in a {size}-byte archive: a zip bomb, not a file "
            "written by torch.save (which stores tensors uncompressed); refused before decompressing anything."
        )
    if declared > limit:
        raise _too_large(path, declared, limit)


def _looks_like(head: bytes, size: int) -> str:
    """A few words on what a file that is not a checkpoint seems to be, for the error message."""
    if size == 0:
        return "the file is empty"
    for magic, kind in (
        (b"\xff\xd8\xff", "a JPEG image"),
        (b"\x89PNG", "a PNG image"),
        (b"GIF8", "a GIF image"),
        (b"\x1f\x8b", "gzip data"),
        (b"%PDF", "a PDF document"),
    ):
        if head.startswith(magic):
            return f"it starts like {kind}"
    if len(head) > 8 and head[8:9] == b"{":
        return "it starts like a safetensors file: give it the .safetensors suffix"
    if all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return "it starts like text"
    return "its first bytes match no known format"


def _torch_load(f: Any, path: Path) -> Mapping[str, Any]:
    """``torch.load(weights_only=True)`` of an opened file; every failure is one CheckpointFileError."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = _GLOBAL_RE.search(str(e))
        if found is None:  # not a refused class: the byte stream itself is not a checkpoint
            raise CheckpointFileError(
                f"{path} is not a readable PyTorch checkpoint (the weights-only unpickler rejected its content); "
                "it may be truncated or of another format."
            ) from e
        raise CheckpointFileError(
            f"{path} cannot be read safely: it needs Python objects beyond tensors and plain containers "
            f"to be unpickled (it references {found.group(1)}). Unpickling such objects can run arbitrary code, "
            "so sadcl refuses to. If you trust the file, load it yourself (torch.load(path, weights_only=False)) "
            "and pass its state dict (a mapping of names to tensors) to load_official_checkpoint."
        ) from None
    except Exception as e:  # noqa: BLE001 - damaged bytes fail inside the unpickler as IndexError, KeyError …
        raise CheckpointFileError(
            f"{path} is not a readable PyTorch checkpoint ({_first_line(e)}); it may be truncated or of another format."
        ) from e


_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")  # how torch's weights-only unpickler names a refused class


def _first_line(e: BaseException) -> str:
    """``"KeyError: 101"``: the error's type and the first line of its message, for a one-line report."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _unwrap(checkpoint: Any, source: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict inside a training checkpoint, and the other top-level entries (as plain values)."""
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"{source}: a checkpoint must be a mapping, found {type(checkpoint).__name__}")
    extras: dict[str, Any] = {}
    state = checkpoint
    for name in _TOP_LEVEL_STATE:
        if isinstance(checkpoint.get(name), Mapping):
            state = checkpoint[name]
            extras = {k: v for k, v in checkpoint.items() if k != name and isinstance(v, (int, float, str, bool))}
            break
    not_tensors = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ValueError(
            f"{source}: found no state dict: the entries {not_tensors[:5]} are not tensors under string names and "
            f"none of {list(_TOP_LEVEL_STATE)} is a mapping of tensors (top-level keys: {list(checkpoint)[:10]})"
        )
    return dict(state), extras


# ----------------------------------------------------------------------------- key mapping
_MODULE_PREFIX = re.compile(r"^module\.")


def checkpoint_filter_fn(state_dict: Mapping[str, torch.Tensor], model: SADCL | None = None) -> dict[str, torch.Tensor]:
    """Rename an authors'/Query2Label state dict to our keys (timm's ``checkpoint_filter_fn`` convention).

    Strips ``module.``, maps ``backbone.0.body.*`` → ``backbone.*`` and ``prototype [1, C, D]`` →
    ``prototypes [C, D]``, and drops ``backbone.1.pe``, ``memorybank`` and ``num_batches_tracked``
    (our model fills in the latter itself). Keys it does not recognise pass through unchanged, so that the
    loader can report them (and so the function is idempotent on our own state dicts). ``model`` is
    accepted for timm compatibility; the mapping does not depend on it.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        key = _MODULE_PREFIX.sub("", key)
        if key in _DROPPED or key.endswith("num_batches_tracked"):
            continue
        if key.startswith("backbone.0.body."):
            key = "backbone." + key[len("backbone.0.body.") :]
        elif key == "prototype":
            key = "prototypes"
            if value.dim() == 3 and value.shape[0] == 1:  # the authors keep a leading batch axis of 1
                value = value[0]
        out[key] = value
    return out


def _dropped_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, str]:
    dropped = {}
    for key in state_dict:
        bare = _MODULE_PREFIX.sub("", key)
        if bare in _DROPPED:
            dropped[bare] = _DROPPED[bare]
    return dropped


# ----------------------------------------------------------------------------- loading
def load_official_checkpoint(model: SADCL, checkpoint: Checkpoint, *, strict: bool = True) -> ConversionReport:
    """Load an authors' SADCL or a Query2Label checkpoint into ``model``; return what was done.

    Args:
        model: a :class:`SADCL` whose architecture matches the checkpoint (``create_model("sadcl_coco_448")``
            for the authors' COCO ResNet-101 at 448 px).
        checkpoint: a file (``.pth``, ``.pth.tar``, ``.pkl``, ``.safetensors``) or an already-loaded mapping
            (the whole training checkpoint, or its state dict).
        strict: raise when a checkpoint key maps to no model key, a model key is missing (other than the
            projection head and prototypes of a Query2Label checkpoint), or shapes differ. With
            ``strict=False`` the loadable tensors are loaded and the rest is only reported (and warned about).

    Returns:
        A :class:`ConversionReport`. A Query2Label checkpoint leaves the projection head and the prototypes
        at their initialisation; the report lists them and an :class:`OfficialCheckpointWarning` says so.
    """
    raw, source = _read(checkpoint)
    return _load_into(model, *_unwrap(raw, source), source, strict=strict)


def _read(checkpoint: Checkpoint) -> tuple[Any, str]:
    """The checkpoint's content (a file is read with :func:`read_checkpoint`) and its name for messages."""
    if isinstance(checkpoint, (str, os.PathLike)):
        return read_checkpoint(checkpoint), str(checkpoint)
    return checkpoint, "<mapping>"


def _load_into(
    model: SADCL, state_dict: dict[str, torch.Tensor], extras: dict[str, Any], source: str, *, strict: bool
) -> ConversionReport:
    """:func:`load_official_checkpoint` of an unwrapped checkpoint; ``source`` names it in messages."""
    report = ConversionReport(source=source, extras=extras, dropped=_dropped_keys(state_dict))
    pe = next((v for k, v in state_dict.items() if _MODULE_PREFIX.sub("", k) == "backbone.1.pe"), None)
    if pe is not None and pe.dim() == 4:
        report.notes.append(
            f"position buffer was made for a {pe.shape[-2]}x{pe.shape[-1]} feature map "
            f"(input {pe.shape[-2] * 32} px at stride 32); recomputed for every input size"
        )

    mapped = checkpoint_filter_fn(state_dict, model)
    expected = model.state_dict()
    has_sadcl_parts = "prototypes" in mapped or any(k.startswith("proj_head.") for k in mapped)
    report.kind = "sadcl" if has_sadcl_parts else "query2label"
    # num_batches_tracked exists only with trainable BatchNorm; the authors' FrozenBatchNorm2d has none.
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    if not has_sadcl_parts:
        report.initialised = sorted(k for k in expected if k.startswith(_SADCL_ONLY_PREFIXES))
        optional |= set(report.initialised)

    loadable: dict[str, torch.Tensor] = {}
    for key, value in mapped.items():
        if key not in expected:
            report.unexpected.append(key)
        elif value.shape != expected[key].shape:
            report.mismatched.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(expected[key].shape)}")
        else:
            loadable[key] = value
    report.missing = sorted(set(expected) - set(mapped) - optional)
    report.loaded = sorted(loadable)

    if not report.ok:
        message = _mismatch_message(model, report)
        if strict:
            raise RuntimeError(message)
        warnings.warn(message + "\nLoaded the rest (strict=False).", OfficialCheckpointWarning, stacklevel=3)
    model.load_state_dict(loadable, strict=False)
    if report.initialised:
        warnings.warn(
            f"{source}: Query2Label checkpoint (no projection head, no prototypes): "
            f"{', '.join(_SADCL_ONLY_PREFIXES)} keep their initialisation. Recompute the prototypes "
            "(sadcl.train.memory) and train before using the contrastive losses.",
            OfficialCheckpointWarning,
            stacklevel=3,
        )
    return report


def _mismatch_message(model: SADCL, report: ConversionReport) -> str:
    lines = [
        f"Cannot map {report.source} ({report.kind} layout) onto SADCL({model.config['backbone']!r}, "
        f"hidden_dim={model.config['hidden_dim']}, num_classes={model.num_classes}):"
    ]
    for title, keys in (
        ("checkpoint keys with no model key", report.unexpected),
        ("model keys missing from the checkpoint", report.missing),
        ("shape mismatches", report.mismatched),
    ):
        if keys:
            lines.append(f"  {title} ({len(keys)}): {', '.join(keys)}")
    lines.append(
        "Build the model with the checkpoint's architecture (backbone, hidden_dim, ffn_dim, num_heads, "
        "layers, num_classes; input_proj.* exists only when hidden_dim differs from the backbone's "
        "channels), or pass strict=False to load what matches."
    )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- file → file
def convert_checkpoint(
    checkpoint: Checkpoint,
    out_path: str | os.PathLike,
    variant: str = "sadcl_coco_448",
    *,
    strict: bool = True,
    overwrite: bool = False,
    **model_kwargs: Any,
) -> dict[str, Any]:
    """Convert an authors'/Query2Label checkpoint into our safetensors file (weights + config header).

    ``variant`` and ``model_kwargs`` (any :func:`sadcl.create_model` override: ``backbone``, ``hidden_dim``,
    ``num_classes`` …) describe the architecture the checkpoint was trained with. An existing ``out_path``
    is replaced only with ``overwrite=True`` (checked after the checkpoint was read, before anything is written).

    Returns:
        ``{"path", "sha256", "size", "report"}``: what to put in ``weights.json`` and the conversion report.
    """
    from .factory import create_model
    from .loading import checkpoint_metadata, export_state_dict
    from .safetensors_io import save_safetensors

    # Read (and refuse) the file before building the model: a bad file fails in milliseconds, not after a
    # ResNet-101 has been built.
    raw, source = _read(checkpoint)
    state_dict, extras = _unwrap(raw, source)
    model = create_model(variant, **model_kwargs)
    report = _load_into(model, state_dict, extras, source, strict=strict)
    if not overwrite and os.path.lexists(out_path):
        raise FileExistsError(f"{out_path} already exists; pass overwrite=True to replace it, or name another file")
    if isinstance(checkpoint, (str, os.PathLike)):  # the header says what the weights descend from
        model.pretrained_cfg["source"] = f"converted from {os.path.basename(os.fspath(checkpoint))}"
    digest = save_safetensors(export_state_dict(model), out_path, checkpoint_metadata(model))
    return {"path": str(out_path), "sha256": digest, "size": os.path.getsize(out_path), "report": report}
