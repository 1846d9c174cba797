"""Pretrained SADCL checkpoints: the ``weights.json`` records, sha256 verification, downloads and resolution.

Each variant of the zoo (for example a COCO model at 448 px) has at most one checkpoint record:
where it lives on the Hugging Face Hub (repo id, file name, *pinned commit*), and its sha256 and
size. Checkpoints are fetched with the real :func:`huggingface_hub.hf_hub_download`, so
``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, ``HF_HUB_CACHE`` and ``cache_dir`` behave as in every
other Hub library. huggingface_hub itself only checks sizes (huggingface_hub#2364), so every file
is also checked against the record's sha256 here; a bad file is removed from the cache before the
error is raised, so it is never loaded, now or next time. Hashing a large file costs seconds, so
files already verified are remembered by (path, size, mtime) in memory and in a small JSON index
kept in the Hub cache.

Checkpoints are always safetensors (read and written by :mod:`sadcl.zoo.safetensors_io`): nothing unpickles.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._atomic import atomic_write_text

__all__ = [
    "WEIGHTS_TABLE_PATH",
    "CheckpointFileError",
    "ChecksumError",
    "NoPretrainedWeightsError",
    "WeightsDownloadError",
    "WeightsError",
    "WeightsRecord",
    "WeightsTableError",
    "download_checkpoint",
    "load_weights_table",
    "resolve_checkpoint",
    "sha256_file",
    "verify_file",
]

_logger = logging.getLogger(__name__)

_ZOO_DIR = Path(__file__).resolve().parent
WEIGHTS_TABLE_PATH = _ZOO_DIR / "weights.json"
"""Default ``weights.json``: next to this module (a link to the repository's top-level file)."""

_SCHEMA = 1
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
COMMIT_RE = re.compile(r"[0-9a-f]{40}")  # a pinned Hub revision (and a snapshot folder's name)
_VERIFY_INDEX_NAME = "sadcl-verified.json"
_HASH_CHUNK = 1 << 20


# ----------------------------------------------------------------------------- errors
class WeightsError(RuntimeError):
    """Base class of every error about pretrained checkpoints."""


class WeightsTableError(WeightsError, ValueError):
    """``weights.json`` is missing or malformed."""


class NoPretrainedWeightsError(WeightsError):
    """The variant has no published checkpoint (its ``weights.json`` entry is ``null``)."""


class ChecksumError(WeightsError):
    """A checkpoint's size or sha256 differs from its record."""


class WeightsDownloadError(WeightsError):
    """A checkpoint could not be fetched from the Hub (or found in the offline cache)."""


class CheckpointFileError(WeightsError):
    """A local checkpoint file is missing, not safetensors, or unreadable."""


# ----------------------------------------------------------------------------- records
@dataclass(frozen=True)
class WeightsRecord:
    """Where one variant's checkpoint lives and what it must hash to.

    Args:
        hf_hub_id: Hub repository, ``"org/name"``.
        filename: file inside the repository (a ``.safetensors`` file).
        revision: the pinned 40-hex commit sha, or ``None`` while the checkpoint is not on the Hub yet.
        sha256: hex sha256 of the file.
        size: size of the file in bytes.
        file: optional copy shipped inside the package, relative to ``sadcl/zoo/``.
    """

    hf_hub_id: str
    filename: str
    revision: str | None
    sha256: str
    size: int
    file: str | None = None

    def __post_init__(self) -> None:
        for name in ("hf_hub_id", "filename", "sha256"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"field {name!r} must be a string, got {getattr(self, name)!r}")
        parts = self.hf_hub_id.split("/")
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"field 'hf_hub_id' must look like 'org/name', got {self.hf_hub_id!r}")
        if not self.filename.endswith(".safetensors"):
            raise ValueError(f"field 'filename' must name a .safetensors file, got {self.filename!r}")
        if self.revision is not None and not (isinstance(self.revision, str) and COMMIT_RE.fullmatch(self.revision)):
            raise ValueError(
                "field 'revision' must be a pinned 40-character lower-case hex commit sha or null, "
                f"got {self.revision!r}"
            )
        if not _SHA256_RE.fullmatch(self.sha256):
            raise ValueError(f"field 'sha256' must be 64 lower-case hex characters, got {self.sha256!r}")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size <= 0:
            raise ValueError(f"field 'size' must be a positive integer (bytes), got {self.size!r}")
        if self.file is not None:
            if not isinstance(self.file, str) or not self.file.endswith(".safetensors"):
                raise ValueError(f"field 'file' must be a .safetensors path or null, got {self.file!r}")
            if Path(self.file).is_absolute() or ".." in Path(self.file).parts:
                raise ValueError(f"field 'file' must be a path relative to sadcl/zoo/, got {self.file!r}")

    @property
    def has_hub(self) -> bool:
        """True when the checkpoint is published on the Hub at a pinned commit."""
        return self.revision is not None

    @property
    def packaged_path(self) -> Path | None:
        """Absolute path of the copy shipped inside the package (it may be missing from a broken install)."""
        return None if self.file is None else _ZOO_DIR / self.file

    @property
    def url(self) -> str:
        """Human-readable Hub address of the file (for messages and docs)."""
        return f"https://huggingface.co/{self.hf_hub_id}/blob/{self.revision or 'main'}/{self.filename}"


_RECORD_FIELDS = {
    "hf_hub_id": str,
    "filename": str,
    "revision": (str, type(None)),
    "sha256": str,
    "size": int,
    "file": (str, type(None)),
}
_REQUIRED_FIELDS = ("hf_hub_id", "filename", "revision", "sha256", "size")


def _record_from_json(variant: str, entry: Any, source: Path) -> WeightsRecord | None:
    where = f"{source}: variant {variant!r}"
    if entry is None:
        return None
    if not isinstance(entry, dict):
        raise WeightsTableError(f"{where} must be null or an object with fields {list(_RECORD_FIELDS)}, got {entry!r}")
    unknown = sorted(set(entry) - set(_RECORD_FIELDS))
    if unknown:
        raise WeightsTableError(f"{where} has unknown field(s) {unknown}; allowed fields are {list(_RECORD_FIELDS)}")
    for name in _REQUIRED_FIELDS:
        if name not in entry:
            raise WeightsTableError(f"{where} is missing the field {name!r}")
    for name, value in entry.items():
        expected = _RECORD_FIELDS[name]
        if not isinstance(value, expected) or (name == "size" and isinstance(value, bool)):
            raise WeightsTableError(f"{where}: field {name!r} has the wrong type ({type(value).__name__}: {value!r})")
    try:
        return WeightsRecord(**entry)
    except (TypeError, ValueError) as e:
        raise WeightsTableError(f"{where}: {e}") from None


def load_weights_table(path: str | os.PathLike[str] | None = None) -> dict[str, WeightsRecord | None]:
    """Read and validate ``weights.json``: ``{"schema": 1, "weights": {variant: record or null}}``.

    A ``null`` record means the variant exists but has no pretrained checkpoint.
    """
    source = Path(path) if path is not None else WEIGHTS_TABLE_PATH
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WeightsTableError(f"weights table not found: {source}") from None
    except json.JSONDecodeError as e:
        raise WeightsTableError(f"weights table {source} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or data.get("schema") != _SCHEMA:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise WeightsTableError(
            f'weights table {source} must be an object with "schema": {_SCHEMA}, found schema {found!r}; '
            "upgrade sadcl if the file was written by a newer version"
        )
    weights = data.get("weights")
    if not isinstance(weights, dict):
        raise WeightsTableError(f'weights table {source} needs an object "weights" mapping variant names to records')
    extra = sorted(set(data) - {"schema", "weights"})
    if extra:
        raise WeightsTableError(f"weights table {source} has unknown top-level key(s) {extra}")
    return {variant: _record_from_json(variant, entry, source) for variant, entry in weights.items()}


# ----------------------------------------------------------------------------- verification
def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


_VerifyKey = tuple[str, int, int, str]  # (realpath, size, mtime_ns, expected sha256)
_verified: set[_VerifyKey] = set()
_index_lock = threading.Lock()


def _read_index(index_path: Path) -> dict[str, Any]:
    try:
        data = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # a missing or damaged index only costs a re-hash
    files = data.get("files") if isinstance(data, dict) and data.get("schema") == _SCHEMA else None
    return files if isinstance(files, dict) else {}


def _index_says_verified(index_path: Path, key: _VerifyKey) -> bool:
    entry = _read_index(index_path).get(key[0])
    return isinstance(entry, dict) and (entry.get("size"), entry.get("mtime_ns"), entry.get("sha256")) == key[1:]


def _remember_in_index(index_path: Path, key: _VerifyKey) -> None:
    """Add ``key`` to the JSON index, atomically (tmp file + ``os.replace``); best effort."""
    with _index_lock:
        files = {p: e for p, e in _read_index(index_path).items() if os.path.exists(p)}  # prune deleted blobs
        files[key[0]] = {"size": key[1], "mtime_ns": key[2], "sha256": key[3]}
        try:
            text = json.dumps({"schema": _SCHEMA, "files": files}, indent=1, sort_keys=True)
            atomic_write_text(index_path, text, durable=False)  # a lost index only costs a re-hash
        except OSError as e:  # read-only cache: verification still works, it is just not remembered
            _logger.debug("could not update the verification index %s: %s", index_path, e)


def verify_file(
    path: str | os.PathLike[str], sha256: str, size: int, *, index_dir: str | os.PathLike[str] | None = None
) -> None:
    """Check that ``path`` has ``size`` bytes and hashes to ``sha256``; raise :class:`ChecksumError` if not.

    A successful check is remembered by (real path, size, mtime_ns, expected sha256): in memory,
    and in ``<index_dir>/sadcl-verified.json`` when ``index_dir`` is given, so a later load of the
    same unmodified file skips hashing. Any change of size or modification time forces a re-hash.
    """
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise CheckpointFileError(f"checkpoint file not found: {path}") from None
    if st.st_size != size:
        raise ChecksumError(f"{path} has {st.st_size} bytes but its record says {size} bytes")
    key: _VerifyKey = (real, st.st_size, st.st_mtime_ns, sha256)
    index_path = Path(index_dir) / _VERIFY_INDEX_NAME if index_dir is not None else None
    if key in _verified or (index_path is not None and _index_says_verified(index_path, key)):
        _verified.add(key)
        return
    actual = sha256_file(real)
    if actual != sha256:
        raise ChecksumError(f"{path} has sha256 {actual} but its record says {sha256}")
    _verified.add(key)
    if index_path is not None:
        _remember_in_index(index_path, key)


# ----------------------------------------------------------------------------- Hub download
def _cache_root(cache_dir: str | os.PathLike[str] | None) -> Path:
    from huggingface_hub import constants

    # Absolute but not symlink-resolved: messages show the directory as the user configured it.
    return Path(os.path.abspath(Path(cache_dir if cache_dir is not None else constants.HF_HUB_CACHE).expanduser()))


def _repo_cache_folder(cache_root: Path, repo_id: str) -> Path:
    """The Hub cache's folder of a model repo: ``models--org--name`` (huggingface_hub's layout)."""
    return cache_root / ("models--" + repo_id.replace("/", "--"))


def evict(pointer: Path, repo_folder: Path) -> None:
    """Delete a cached file: its snapshot entry and the blob it links to, so it can be neither loaded nor reused.

    Both must go: huggingface_hub re-links an existing blob without downloading it again.
    """
    target = Path(os.path.realpath(pointer))
    pointer.unlink(missing_ok=True)
    if repo_folder.resolve() in target.parents:
        target.unlink(missing_ok=True)


def download_checkpoint(
    record: WeightsRecord, *, variant: str, cache_dir: str | os.PathLike[str] | None = None
) -> Path:
    """Fetch (or find in the Hub cache) the checkpoint of ``record`` and verify its size and sha256.

    Uses :func:`sadcl.zoo.hub.hub_download` (``hf_hub_download`` within an overall deadline) at the record's
    pinned commit, so a warm cache needs no network at all, and ``HF_HUB_OFFLINE``/``HF_ENDPOINT``/
    ``HF_HUB_CACHE``/``SADCL_DOWNLOAD_TIMEOUT`` apply.

    Returns:
        The path of the verified file in the Hub cache.

    Raises:
        WeightsDownloadError: the checkpoint is not on the Hub yet, or could not be fetched.
        ChecksumError: the file differs from the record; it has been removed from the cache.
    """
    from .hub import hub_download  # hub imports this module

    cache_root = _cache_root(cache_dir)
    if not record.has_hub:
        raise WeightsDownloadError(
            f"the checkpoint of {variant!r} ({record.filename}) is not published on the Hub yet "
            f"(no pinned revision in {record.hf_hub_id!r}). Pass checkpoint_path=<file> to load a local copy."
        )
    path = hub_download(
        record.hf_hub_id,
        record.filename,
        revision=record.revision,
        cache_dir=cache_dir,
        what=f"the checkpoint of {variant!r}",
        instead="pass checkpoint_path=<file>",
        if_missing="The weights.json entry is out of date: upgrade sadcl or report it.",
    )

    repo_folder = _repo_cache_folder(cache_root, record.hf_hub_id)
    try:
        verify_file(path, record.sha256, record.size, index_dir=repo_folder)
    except ChecksumError as e:
        evict(path, repo_folder)
        raise ChecksumError(
            f"the checkpoint of {variant!r} ({record.filename} from Hub repo {record.hf_hub_id!r} at revision "
            f"{record.revision}) is corrupt: {e}. The bad file was deleted from the cache directory {cache_root}; "
            "run again to download a fresh copy. If this keeps happening, the file on the Hub (or a mirror or "
            "proxy in between) differs from weights.json: please report it."
        ) from None
    return path


def resolve_checkpoint(
    record: WeightsRecord | None,
    *,
    variant: str,
    cache_dir: str | os.PathLike[str] | None = None,
    checkpoint_path: str | os.PathLike[str] | None = None,
) -> Path:
    """Pick the checkpoint file to load: ``checkpoint_path`` > packaged file > Hub download.

    A user's ``checkpoint_path`` is not checked against the record (it may be a fine-tuned model),
    only that it exists and is a ``.safetensors`` file. The packaged file and Hub downloads are
    verified against the record's sha256.
    """
    if checkpoint_path is not None:
        path = Path(checkpoint_path).expanduser()
        if not path.is_file():
            raise CheckpointFileError(f"checkpoint_path {str(path)!r} does not exist or is not a file")
        if path.suffix != ".safetensors":
            raise CheckpointFileError(
                f"checkpoint_path {str(path)!r} is not a .safetensors file; sadcl never unpickles checkpoints. "
                "Convert it first (see sadcl.zoo.convert for the authors' .pth checkpoints)."
            )
        return path
    if record is None:
        raise NoPretrainedWeightsError(
            f"{variant!r} has no pretrained checkpoint; create it with pretrained=False, or pass checkpoint_path=<file>"
        )
    packaged = record.packaged_path
    if packaged is not None:
        if packaged.is_file():
            try:
                verify_file(packaged, record.sha256, record.size)
            except ChecksumError as e:
                raise ChecksumError(
                    f"the packaged checkpoint of {variant!r} is corrupt: {e}. Reinstall sadcl "
                    "(pip install --force-reinstall sadcl)."
                ) from None
            return packaged
        if not record.has_hub:
            raise CheckpointFileError(
                f"the packaged checkpoint of {variant!r} is missing: {packaged}. The installation is incomplete: "
                "reinstall sadcl, or pass checkpoint_path=<file>."
            )
        _logger.warning("packaged checkpoint %s is missing; downloading %s instead", packaged, record.url)
    return download_checkpoint(record, variant=variant, cache_dir=cache_dir)
