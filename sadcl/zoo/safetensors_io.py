"""safetensors files, read and written: the only way sadcl touches weights on disk.

Reading checks the path first (a regular file, a header length that fits the file: nothing is opened or
allocated beyond what the file holds) and turns every failure into one :class:`CheckpointFileError` naming the
file. Writing is atomic and deterministic: ``safetensors.torch.save`` writes its metadata map in a random order
(a Rust HashMap), so two saves of the same weights differ byte for byte; :func:`serialize` lays out the same
bytes as safetensors with the metadata sorted, so the same content always has the same sha256.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from .._atomic import atomic_write
from .._files import open_regular
from .weights import CheckpointFileError

__all__ = ["check_safetensors_file", "read_safetensors", "read_safetensors_metadata", "save_safetensors", "serialize"]

_SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def serialize(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """safetensors bytes, deterministic: sorted metadata, tensors by (alignment, name) as safetensors orders them.

    ``safetensors.torch.save`` writes its metadata map in a random order (a Rust HashMap), so two saves of the
    same weights differ byte for byte; this writer gives one sha256 per content.
    """
    meta = dict(metadata or {})
    for k, v in meta.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"safetensors metadata must map str to str; entry {k!r}: {v!r} is not")
    items = []
    for name, t in tensors.items():
        if t.dtype not in _SAFETENSORS_DTYPES:
            raise TypeError(f"tensor {name!r} has dtype {t.dtype}, which safetensors cannot store")
        items.append((name, t.detach().to("cpu").contiguous()))
    # Larger items first keeps every tensor aligned to its itemsize (safetensors' own order).
    items.sort(key=lambda it: (-it[1].element_size(), it[0]))
    header: dict[str, Any] = {}
    if meta:
        header["__metadata__"] = dict(sorted(meta.items()))
    chunks, offset = [], 0
    for name, t in items:
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {
            "dtype": _SAFETENSORS_DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


_SAFETENSORS_MAX_HEADER = 100_000_000  # the safetensors library's own limit on the JSON header, in bytes


def check_safetensors_file(path: str | os.PathLike[str]) -> Path:
    """Refuse, before the safetensors library opens it, what cannot be a safetensors file.

    Only regular files (a FIFO would block ``safe_open`` forever), at least 8 bytes long, whose 8-byte
    header length fits inside the file and under the library's 100 MB limit. The library then validates
    the header itself (JSON types, dtypes, shapes against byte ranges, contiguous non-overlapping offsets),
    so no tensor can claim more bytes than the file holds.
    """
    with open_regular(path, "checkpoint file", CheckpointFileError) as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
    if len(head) < 8:
        raise CheckpointFileError(
            f"{path} is not a valid safetensors file: it is {size} bytes long, shorter than the 8-byte header "
            "length; it may be truncated. Download or export it again."
        )
    declared = int.from_bytes(head, "little")
    if declared > min(size - 8, _SAFETENSORS_MAX_HEADER):
        why = (
            f"more than the {size - 8} bytes that follow it"
            if declared > size - 8
            else f"more than the {_SAFETENSORS_MAX_HEADER}-byte limit"
        )
        raise CheckpointFileError(
            f"{path} is not a valid safetensors file: its header length says {declared} bytes, {why}; it may be "
            "truncated or of another format. Download or export it again."
        )
    return Path(path)


@contextlib.contextmanager
def _safe_open(path: str | os.PathLike[str]) -> Iterator[Any]:
    """``safetensors.safe_open`` of a checked regular file; every problem is one :class:`CheckpointFileError`."""
    from safetensors import SafetensorError, safe_open

    check_safetensors_file(path)
    try:
        with safe_open(os.fspath(path), framework="pt", device="cpu") as f:
            yield f
    except FileNotFoundError:  # removed since the check
        raise CheckpointFileError(f"checkpoint file not found: {path}") from None
    except (SafetensorError, OSError, ValueError, TypeError, RuntimeError) as e:  # TypeError: a dtype torch lacks
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointFileError(
            f"{path} is not a valid safetensors file ({reason}); it may be truncated or of another format. "
            "Download or export it again."
        ) from e


def read_safetensors(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load a safetensors checkpoint onto the CPU: (state dict, header metadata). Never unpickles.

    Every problem with the file (missing, not a regular file, truncated, malformed header) is one
    :class:`CheckpointFileError` naming it; nothing is allocated beyond the tensors the file holds.
    """
    with _safe_open(path) as f:
        metadata = dict(f.metadata() or {})
        state_dict = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open is not a mapping)
    return state_dict, metadata


def read_safetensors_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file; only its header is read (no tensor)."""
    with _safe_open(path) as f:
        return dict(f.metadata() or {})


def save_safetensors(
    state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None
) -> str:
    """Write ``state_dict`` as safetensors atomically and deterministically; return the file's sha256.

    The file is written next to ``path``, flushed to disk, then renamed over it: a crash never
    leaves a half-written checkpoint under the final name. The same tensors and metadata always give
    the same bytes (:func:`sadcl.zoo.header.serialize`).
    """
    data = serialize(state_dict, metadata)
    atomic_write(path, lambda f: f.write(data))
    return hashlib.sha256(data).hexdigest()
