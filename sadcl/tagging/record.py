"""The settings record of a tagging job: ``FILE.job.json`` beside ``--output FILE``.

JSON Lines and CSV records do not say which weights, ``--threshold`` or ``--top-k`` produced them, so a job
resumed with other settings would append another job's results to the same file. A job that creates (or
``--overwrite``\\ s) its output therefore first writes, atomically, what decides the records' content: the
weights' sha256 (the recorded sha256 of a published or exported model, the file's own for a checkpoint, else a
digest of the state_dict tensors), the labels, the preprocessing, ``--threshold``, ``--top-k`` and the format.
``--resume`` compares it with the settings of the command being run and refuses any difference in one line.

The record is data: it is read bounded (:data:`MAX_BYTES`), validated, and only compared, never used to build,
load or fetch anything. It is never rewritten by a resumed job, so it keeps saying how the file was begun.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .._atomic import atomic_write_text
from .._files import not_regular_reason, open_regular
from .._text import printable

__all__ = [
    "MAX_BYTES",
    "NotOurs",
    "check_replaceable",
    "compare",
    "difference",
    "read",
    "record_path",
    "settings",
    "state_dict_sha256",
    "weights_identity",
    "write",
]

SUFFIX = ".job.json"
FORMAT = "sadcl predict job settings"  # what marks a record as ours
VERSION = 1
MAX_BYTES = 1 << 20  # a record is a few kB (labels included); anything larger was not written by sadcl
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SHOWN = 80  # characters of a recorded value quoted in a message
_PATH_SHOWN = 200  # ... of a model argument (a path)
_AGAIN = "rerun with the original settings, or start over with --overwrite"


class NotOurs(ValueError):
    """A settings record that ``sadcl predict`` did not write (or that was damaged since)."""


def record_path(output: str | os.PathLike) -> Path:
    """``FILE.job.json`` for ``--output FILE``."""
    return Path(f"{os.fspath(output)}{SUFFIX}")


# ----------------------------------------------------------------------------- what the job is
def state_dict_sha256(model: Any) -> str:
    """sha256 of a model's tensors (name, dtype, shape and bytes of each, in name order): the identity of weights
    that did not come from a file."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        head = json.dumps([name, str(t.dtype), list(tensor.shape), t.numel() * t.element_size()])
        digest.update(head.encode("utf-8") + b"\n")
        digest.update(memoryview(t.view(torch.uint8).numpy()))
    return digest.hexdigest()


def weights_identity(model: Any) -> dict[str, str]:
    """``{"sha256", "of"}``: the sha256 the weights were verified against (a published variant, an export
    folder or a Hub export, ``of`` = ``"file"``), the sha256 of the checkpoint file they were read from, or
    for weights from no file a digest of the tensors (``of`` = ``"state_dict"``)."""
    from ..zoo.weights import sha256_file

    cfg = getattr(model, "pretrained_cfg", None) or {}
    weights = cfg.get("weights")
    if isinstance(weights, Mapping) and isinstance(weights.get("sha256"), str) and _SHA256.fullmatch(weights["sha256"]):
        return {"sha256": weights["sha256"], "of": "file"}
    source = cfg.get("source")
    if isinstance(source, str) and not_regular_reason(source) is None:
        try:
            return {"sha256": sha256_file(source), "of": "file"}
        except OSError as e:
            raise OSError(f"cannot read {source} to record its sha256 beside --output: {e.strerror or e}") from None
    return {"sha256": state_dict_sha256(model), "of": "state_dict"}


def model_argument(model: str | None, checkpoint: str | None) -> str:
    """How the command named its model, as written on its command line."""
    from ..zoo.factory import DEFAULT_MODEL

    parts = ([f"--model {model}"] if model is not None else []) + (
        [f"--checkpoint {checkpoint}"] if checkpoint is not None else []
    )
    return " ".join(parts) or f"the default model {DEFAULT_MODEL}"


def settings(
    model: Any,
    *,
    output: str | os.PathLike,
    model_arg: str | None,
    checkpoint: str | None,
    threshold: float | None,
    top_k: int | None,
) -> dict[str, Any]:
    """The record of the job being run (JSON-ready: lists, not tuples)."""
    from .. import __version__
    from ..data.preprocessing import from_pretrained_cfg

    identity = weights_identity(model)
    now = {
        "format": FORMAT,
        "version": VERSION,
        "sadcl": __version__,  # informational: never compared
        "output": Path(output).suffix.lower().lstrip("."),
        "model": {
            "argument": model_argument(model_arg, checkpoint),  # informational: a moved file is the same model
            "variant": (getattr(model, "pretrained_cfg", None) or {}).get("variant"),  # informational
            **identity,
        },
        "labels": [str(n) for n in model.label_names],
        "transform": from_pretrained_cfg(model.pretrained_cfg).to_dict(),
        "threshold": threshold,
        "top_k": top_k,
    }
    return json.loads(json.dumps(now))  # the values exactly as they read back from the file


# ----------------------------------------------------------------------------- the file
def write(output: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """Write the record beside ``output`` (atomically: a crash leaves the old record or the new one)."""
    # One setting a line, each value on its line (labels too): small, and a diff of two records reads easily.
    lines = (f"  {json.dumps(key)}: {json.dumps(value, ensure_ascii=True)}" for key, value in record.items())
    atomic_write_text(record_path(output), "{\n" + ",\n".join(lines) + "\n}\n")


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def read(output: str | os.PathLike) -> dict[str, Any] | None:
    """The record beside ``output``, validated; None when there is none. :class:`NotOurs` (naming the file and
    why) when it is not a record this module wrote: too large, not JSON, another format or version; a
    ``FileExistsError`` when a folder, FIFO… is in its place (never opened)."""
    path = record_path(output)
    reason = not_regular_reason(path)
    if reason == "file not found":
        return None
    if reason is not None:
        raise _in_the_way(output, reason)
    with open_regular(path, "settings record", NotOurs) as f:
        data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise NotOurs(f"{path} is larger than {MAX_BYTES:,} bytes")
    try:
        record = json.loads(data.decode("utf-8"), parse_constant=_no_constants)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise NotOurs(f"{path} is not JSON ({printable(str(e).split(':')[0])})") from None
    why = _invalid(record)
    if why is not None:
        raise NotOurs(f"{path} is not a settings record of `sadcl predict` ({why})")
    return record


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _invalid(record: Any) -> str | None:
    """Why ``record`` (parsed JSON, untrusted) is not a version-1 record; None when it is one."""
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        return f'no "format": "{FORMAT}"'
    if record.get("version") != VERSION or isinstance(record.get("version"), bool):
        return f"version {printable(repr(record.get('version')))[:_SHOWN]}, this sadcl reads version {VERSION}"
    model = record.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("argument"), str):
        return '"model" is not {"argument", "sha256", "of"}'
    if not isinstance(model.get("sha256"), str) or not _SHA256.fullmatch(model["sha256"]):
        return '"model": "sha256" is not 64 lower-case hex digits'
    if model.get("of") not in ("file", "state_dict"):
        return '"model": "of" is not "file" or "state_dict"'
    labels = record.get("labels")
    if not isinstance(labels, list) or not all(isinstance(n, str) for n in labels):
        return '"labels" is not a list of names'
    transform = record.get("transform")
    if not isinstance(transform, dict) or not all(
        isinstance(v, str) or _number(v) or (isinstance(v, list) and all(_number(x) for x in v))
        for v in transform.values()
    ):
        return '"transform" is not an object of names and numbers'
    if record.get("threshold") is not None and not _number(record["threshold"]):
        return '"threshold" is not a number or null'
    top_k = record.get("top_k")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool)):
        return '"top_k" is not a whole number or null'
    if not isinstance(record.get("output"), str):
        return '"output" is not a format name'
    return None


def _in_the_way(output: str | os.PathLike, reason: str) -> FileExistsError:
    return FileExistsError(
        f"--output {output}: {record_path(output)} is in the way of its settings record ({reason}); move it"
    )


def check_replaceable(output: str | os.PathLike, overwrite: bool) -> None:
    """Before a job that will write ``output``'s record: refuse a ``FILE.job.json`` that cannot be replaced (a
    folder, a FIFO…) and, without ``--overwrite``, one that ``sadcl predict`` did not write."""
    path = record_path(output)
    reason = not_regular_reason(path)
    if reason == "file not found":
        return
    if reason is not None:
        raise _in_the_way(output, reason)
    if overwrite:
        return  # the user asked to replace --output; its record goes with it
    try:
        read(output)
    except NotOurs as e:
        raise FileExistsError(
            f"--output {output}: {e}, and sadcl writes the job's settings there: move it away, or pass "
            "--overwrite to replace it"
        ) from None


# ----------------------------------------------------------------------------- comparing
def _shown(value: Any, limit: int = _SHOWN) -> str:
    """A value (from the record: untrusted) as a short printable text."""
    text = printable(value if isinstance(value, str) else json.dumps(value))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _option(flag: str, old: Any, new: Any) -> str:
    """``--threshold 0.5, now 0.7``; a value that was not given is said so."""
    if old is None:
        return f"no {flag}, now {flag} {_shown(new)}"
    if new is None:
        return f"{flag} {_shown(old)}, now none"
    return f"{flag} {_shown(old)}, now {_shown(new)}"


def _labels(old: Sequence[str], new: Sequence[str]) -> str:
    if len(old) != len(new):
        return f"{len(old)} labels ({_shown(', '.join(old[:3]))}…), now {len(new)} ({_shown(', '.join(new[:3]))}…)"
    i = next(i for i, (a, b) in enumerate(zip(old, new)) if a != b)
    return f"label {i + 1} {_shown(repr(old[i]))}, now {_shown(repr(new[i]))}"


_TRANSFORM_WORDS = {"input_size": "image size (C, H, W)", "interpolation": "interpolation"}


def difference(recorded: Mapping[str, Any], now: Mapping[str, Any]) -> str | None:
    """The first setting that differs, as ``"<setting and value recorded>, now <value now>"``; None if none.
    Weights first (a model change also changes labels and preprocessing), then labels, preprocessing, options."""
    old_m, new_m = recorded["model"], now["model"]
    if (old_m["of"], old_m["sha256"]) != (new_m["of"], new_m["sha256"]):
        return (
            f"weights sha256 {old_m['sha256'][:12]} ({_shown(old_m['argument'], _PATH_SHOWN)}), now "
            f"{new_m['sha256'][:12]} ({_shown(new_m['argument'], _PATH_SHOWN)})"
        )
    if recorded["labels"] != now["labels"]:
        return _labels(recorded["labels"], now["labels"])
    old_t, new_t = recorded["transform"], now["transform"]
    for key in sorted(set(old_t) | set(new_t)):
        if old_t.get(key) != new_t.get(key):
            word = f"the model's preprocessing {_TRANSFORM_WORDS.get(key, key)}"
            return f"{word} {_shown(old_t.get(key))}, now {_shown(new_t.get(key))}"
    for key, flag in (("threshold", "--threshold"), ("top_k", "--top-k")):
        if recorded.get(key) != now.get(key):
            return _option(flag, recorded.get(key), now.get(key))
    if recorded["output"] != now["output"]:
        return f"format {_shown(recorded['output'])}, now {_shown(now['output'])}"
    return None


def compare(output: str | os.PathLike, recorded: Mapping[str, Any], now: Mapping[str, Any]) -> None:
    """Raise a one-line ``ValueError`` naming the first setting of ``now`` that differs from ``recorded``."""
    diff = difference(recorded, now)
    if diff is not None:
        raise ValueError(f"--resume: {output} was written with {diff}; {_AGAIN}")
