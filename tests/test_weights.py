"""Checkpoint records, verified Hub downloads and safetensors I/O.

Every download goes through the real ``huggingface_hub.hf_hub_download``, talking to the loopback
``FakeHub`` (tests/hubserver.py); nothing of huggingface_hub is mocked.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import RemoteEntryNotFoundError

from sadcl.zoo import safetensors_io as ST
from sadcl.zoo import weights as W
from sadcl.zoo.weights import (
    CheckpointFileError,
    ChecksumError,
    NoPretrainedWeightsError,
    WeightsDownloadError,
    WeightsError,
    WeightsRecord,
    WeightsTableError,
)

REPO = "sadcl-test/tiny"
FILENAME = "model.safetensors"


@pytest.fixture(autouse=True)
def _fresh_verify_memo(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with an empty in-memory record of verified files."""
    monkeypatch.setattr(W, "_verified", set())


@pytest.fixture
def checkpoint_bytes(tmp_path: Path) -> bytes:
    """A small real safetensors checkpoint, with metadata."""
    path = tmp_path / "src" / "tiny.safetensors"
    ST.save_safetensors(
        {"fc.weight": torch.arange(12.0).reshape(3, 4), "fc.bias": torch.ones(3)},
        path,
        {"variant": "tiny", "label_names": "cat,dog,bird"},
    )
    return path.read_bytes()


def _record(content: bytes, revision: str | None, **overrides: object) -> WeightsRecord:
    fields = {
        "hf_hub_id": REPO,
        "filename": FILENAME,
        "revision": revision,
        "sha256": hashlib.sha256(content).hexdigest(),
        "size": len(content),
    }
    fields.update(overrides)
    return WeightsRecord(**fields)  # type: ignore[arg-type]


@pytest.fixture
def published(fake_hub, checkpoint_bytes: bytes) -> tuple[WeightsRecord, bytes]:
    """The checkpoint published as an LFS file at a pinned commit, and its record."""
    commit = fake_hub.add_file(REPO, FILENAME, checkpoint_bytes)
    return _record(checkpoint_bytes, commit), checkpoint_bytes


def _resolve_path(record: WeightsRecord) -> str:
    return f"/{record.hf_hub_id}/resolve/{record.revision}/{record.filename}"


def _snapshot(cache: Path, record: WeightsRecord) -> Path:
    repo_folder = cache / f"models--{record.hf_hub_id.replace('/', '--')}"
    return repo_folder / "snapshots" / str(record.revision) / record.filename


def _count_hashing(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = W.sha256_file

    def counting(path: str | os.PathLike[str]) -> str:
        calls.append(os.fspath(path))
        return real(path)

    monkeypatch.setattr(W, "sha256_file", counting)
    return calls


# ----------------------------------------------------------------------------- the fake Hub itself
def test_fake_hub_speaks_the_download_protocol(fake_hub, hf_cache: Path) -> None:
    """Regular and LFS files, via a branch name: the real client caches, revalidates with one HEAD."""
    commit = fake_hub.add_file(REPO, "config.json", b'{"a": 1}', lfs=False)
    fake_hub.add_file(REPO, "big.bin", b"x" * 1000)

    assert Path(hf_hub_download(REPO, "config.json")).read_bytes() == b'{"a": 1}'
    assert fake_hub.requests == [
        ("HEAD", f"/{REPO}/resolve/main/config.json"),
        ("GET", f"/{REPO}/resolve/main/config.json"),
    ]
    assert (hf_cache / "models--sadcl-test--tiny" / "refs" / "main").read_text() == commit

    fake_hub.requests.clear()
    assert Path(hf_hub_download(REPO, "big.bin")).read_bytes() == b"x" * 1000
    sha = hashlib.sha256(b"x" * 1000).hexdigest()
    assert fake_hub.requests == [("HEAD", f"/{REPO}/resolve/main/big.bin"), ("GET", f"/lfs-blobs/{sha}")]
    assert fake_hub.request_headers[-1]["host"].startswith("localhost:")  # a CDN-like other host
    assert (hf_cache / "models--sadcl-test--tiny" / "blobs" / sha).is_file()  # LFS blobs are named by sha256

    fake_hub.requests.clear()
    hf_hub_download(REPO, "big.bin")
    assert fake_hub.requests == [("HEAD", f"/{REPO}/resolve/main/big.bin")]  # branch: revalidate only


# ----------------------------------------------------------------------------- download_checkpoint
def test_download_happy_path(fake_hub, published, hf_cache: Path) -> None:
    record, content = published
    path = W.download_checkpoint(record, variant="tiny")

    assert path == _snapshot(hf_cache.resolve(), record)
    assert path.read_bytes() == content
    sha = record.sha256
    assert fake_hub.requests == [("HEAD", _resolve_path(record)), ("GET", f"/lfs-blobs/{sha}")]
    assert fake_hub.request_headers[0]["user-agent"].startswith("sadcl/")
    state_dict, metadata = ST.read_safetensors(path)
    assert torch.equal(state_dict["fc.weight"], torch.arange(12.0).reshape(3, 4))
    assert metadata == {"variant": "tiny", "label_names": "cat,dog,bird"}


def test_download_honours_cache_dir_argument(fake_hub, published, tmp_path: Path, hf_cache: Path) -> None:
    record, _ = published
    path = W.download_checkpoint(record, variant="tiny", cache_dir=tmp_path / "elsewhere")
    assert path == _snapshot((tmp_path / "elsewhere").resolve(), record)
    assert not hf_cache.exists()


def test_cached_pinned_checkpoint_needs_no_request_and_no_rehash(fake_hub, published, monkeypatch) -> None:
    record, _ = published
    hashed = _count_hashing(monkeypatch)
    first = W.download_checkpoint(record, variant="tiny")
    assert len(hashed) == 1 and len(fake_hub.requests) == 2

    fake_hub.requests.clear()
    assert W.download_checkpoint(record, variant="tiny") == first
    assert fake_hub.requests == []  # a pinned commit in cache is served without HEAD
    assert len(hashed) == 1


def test_pinned_checkpoint_works_with_the_server_down(fake_hub, published) -> None:
    record, content = published
    W.download_checkpoint(record, variant="tiny")
    fake_hub.stop()
    fake_hub.requests.clear()

    start = time.perf_counter()
    assert W.download_checkpoint(record, variant="tiny").read_bytes() == content
    assert time.perf_counter() - start < 2  # no retry/back-off stall
    assert fake_hub.requests == []


def test_offline_with_warm_cache(fake_hub, published, hub_offline) -> None:
    record, content = published
    W.download_checkpoint(record, variant="tiny")
    fake_hub.requests.clear()
    hub_offline(True)
    assert W.download_checkpoint(record, variant="tiny").read_bytes() == content
    assert fake_hub.requests == []


def test_offline_with_cold_cache_says_what_is_missing_and_where(fake_hub, published, hub_offline, hf_cache) -> None:
    record, _ = published
    hub_offline(True)
    with pytest.raises(WeightsDownloadError) as info:
        W.download_checkpoint(record, variant="tiny")
    message = str(info.value)
    for expected in (REPO, FILENAME, str(record.revision), str(hf_cache), "HF_HUB_OFFLINE", "'tiny'"):
        assert expected in message
    assert fake_hub.requests == []


def test_same_size_corruption_is_caught_evicted_and_recovers(fake_hub, published, hf_cache: Path) -> None:
    record, content = published
    fake_hub.corrupt(REPO, FILENAME)  # huggingface_hub accepts this: only the size is checked

    with pytest.raises(ChecksumError) as info:
        W.download_checkpoint(record, variant="tiny")
    message = str(info.value)
    assert record.sha256 in message and REPO in message and str(hf_cache) in message
    repo_folder = hf_cache / "models--sadcl-test--tiny"
    assert not _snapshot(hf_cache, record).exists() and not _snapshot(hf_cache, record).is_symlink()
    assert list((repo_folder / "blobs").iterdir()) == []  # the bad blob is gone, so it cannot be re-linked

    fake_hub.restore(REPO, FILENAME, content)
    fake_hub.requests.clear()
    assert W.download_checkpoint(record, variant="tiny").read_bytes() == content
    assert [method for method, _ in fake_hub.requests] == ["HEAD", "GET"]  # downloaded afresh


def test_corrupted_cached_file_is_detected_on_the_next_load(fake_hub, published, hf_cache: Path) -> None:
    record, content = published
    path = W.download_checkpoint(record, variant="tiny")
    blob = Path(os.path.realpath(path))
    blob.chmod(0o644)
    blob.write_bytes(bytes(b ^ 1 for b in content))  # same size, new mtime
    W._verified.clear()

    with pytest.raises(ChecksumError):
        W.download_checkpoint(record, variant="tiny")
    assert not blob.exists() and not path.is_symlink()
    assert W.download_checkpoint(record, variant="tiny").read_bytes() == content


def test_truncated_download_is_reported(fake_hub, published, hf_cache: Path) -> None:
    record, _ = published
    fake_hub.truncate(REPO, FILENAME)
    with pytest.raises(WeightsDownloadError, match="incomplete") as info:
        W.download_checkpoint(record, variant="tiny")
    assert REPO in str(info.value) and FILENAME in str(info.value)
    assert "Consistency check failed" in str(info.value.__cause__)
    assert not _snapshot(hf_cache, record).exists()


def test_missing_file_on_the_hub(fake_hub, published) -> None:
    record, content = published
    missing = _record(content, record.revision, filename="other.safetensors")
    with pytest.raises(WeightsDownloadError, match="has no file 'other.safetensors'") as info:
        W.download_checkpoint(missing, variant="tiny")
    assert isinstance(info.value.__cause__, RemoteEntryNotFoundError)
    assert REPO in str(info.value)


def test_unknown_revision(fake_hub, published) -> None:
    _, content = published
    stale = _record(content, "f" * 40)
    with pytest.raises(WeightsDownloadError, match=f"revision {'f' * 40} does not exist"):
        W.download_checkpoint(stale, variant="tiny")


def test_unknown_repo(fake_hub, published) -> None:
    _, content = published
    with pytest.raises(WeightsDownloadError, match="repository 'nobody/nothing' was not found"):
        W.download_checkpoint(_record(content, "a" * 40, hf_hub_id="nobody/nothing"), variant="tiny")
    assert fake_hub.requests == [("HEAD", f"/nobody/nothing/resolve/{'a' * 40}/{FILENAME}")]


def test_record_without_revision_is_not_downloaded(fake_hub, checkpoint_bytes: bytes) -> None:
    with pytest.raises(WeightsDownloadError, match="not published on the Hub yet"):
        W.download_checkpoint(_record(checkpoint_bytes, None), variant="tiny")
    assert fake_hub.requests == []


def test_fake_hub_environment_reaches_subprocesses(fake_hub, published) -> None:
    """A fresh interpreter configured by the environment alone (HF_ENDPOINT is read at import) uses the
    fake Hub and the test's cache, as a CLI or torch.hub subprocess of a test would."""
    record, content = published
    script = (
        f"import huggingface_hub as h; print(h.hf_hub_download({REPO!r}, {FILENAME!r}, revision={record.revision!r}))"
    )
    out = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    path = Path(out.stdout.strip())
    assert path.read_bytes() == content
    assert path.is_relative_to(Path(os.environ["HF_HUB_CACHE"]).resolve())
    assert fake_hub.requests == [("HEAD", _resolve_path(record)), ("GET", f"/lfs-blobs/{record.sha256}")]


# ----------------------------------------------------------------------------- verify_file
def test_verify_index_skips_rehashing_and_detects_changes(tmp_path: Path, monkeypatch) -> None:
    path, index_dir = tmp_path / "w.safetensors", tmp_path / "index"
    path.write_bytes(b"a" * 100)
    sha = hashlib.sha256(b"a" * 100).hexdigest()
    hashed = _count_hashing(monkeypatch)

    W.verify_file(path, sha, 100, index_dir=index_dir)
    W.verify_file(path, sha, 100, index_dir=index_dir)
    assert len(hashed) == 1  # remembered in memory

    W._verified.clear()  # as in a new process: the JSON index remembers
    W.verify_file(path, sha, 100, index_dir=index_dir)
    assert len(hashed) == 1
    index = json.loads((index_dir / "sadcl-verified.json").read_text())
    assert index["files"][os.path.realpath(path)]["sha256"] == sha
    assert [p.name for p in index_dir.iterdir()] == ["sadcl-verified.json"]  # no temporary file left

    path.write_bytes(b"b" * 100)  # same size, new content
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # a distinct mtime even on coarse clocks
    with pytest.raises(ChecksumError, match=sha):
        W.verify_file(path, sha, 100, index_dir=index_dir)
    assert len(hashed) == 2

    path.write_bytes(b"a" * 101)
    with pytest.raises(ChecksumError, match="101 bytes"):  # caught by size, without hashing
        W.verify_file(path, sha, 100, index_dir=index_dir)
    assert len(hashed) == 2


def test_verify_ignores_a_damaged_index(tmp_path: Path) -> None:
    path = tmp_path / "w.bin"
    path.write_bytes(b"abc")
    (tmp_path / "sadcl-verified.json").write_text("{not json")
    W.verify_file(path, hashlib.sha256(b"abc").hexdigest(), 3, index_dir=tmp_path)
    assert json.loads((tmp_path / "sadcl-verified.json").read_text())["schema"] == 1


def test_sha256_file_matches_hashlib(tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 17)  # spans several chunks
    (tmp_path / "f").write_bytes(data)
    assert W.sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------- weights.json
_GOOD = {
    "hf_hub_id": "org/sadcl-coco-448",
    "filename": "model.safetensors",
    "revision": "0" * 40,
    "sha256": "a" * 64,
    "size": 123,
    "file": None,
}


def _write_table(tmp_path: Path, table: object) -> Path:
    path = tmp_path / "weights.json"
    path.write_text(json.dumps(table))
    return path


def test_weights_table_round_trip(tmp_path: Path) -> None:
    table = W.load_weights_table(
        _write_table(
            tmp_path,
            {
                "schema": 1,
                "weights": {
                    "sadcl_coco_448": _GOOD,
                    "sadcl_voc_448": None,
                    "sadcl_nus_448": {k: v for k, v in _GOOD.items() if k != "file"} | {"revision": None},
                },
            },
        )
    )
    assert table["sadcl_coco_448"] == WeightsRecord(**_GOOD) and table["sadcl_coco_448"].has_hub
    assert table["sadcl_voc_448"] is None
    assert not table["sadcl_nus_448"].has_hub and table["sadcl_nus_448"].file is None


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"sha256": None}, "field 'sha256' has the wrong type"),
        ({"sha256": "abc"}, "'sha256' must be 64"),
        ({"sha256": "A" * 64}, "'sha256' must be 64"),
        ({"revision": "main"}, "'revision' must be a pinned 40-character"),
        ({"size": "123"}, "field 'size' has the wrong type"),
        ({"size": True}, "field 'size' has the wrong type"),
        ({"size": 0}, "'size' must be a positive integer"),
        ({"hf_hub_id": "no-slash"}, "'hf_hub_id' must look like 'org/name'"),
        ({"filename": "model.pth"}, "'filename' must name a .safetensors file"),
        ({"file": "../../evil.safetensors"}, "'file' must be a path relative"),
        ({"revison": "0" * 40}, r"unknown field\(s\) \['revison'\]"),
        ({"hf_hub_id": ...}, "missing the field 'hf_hub_id'"),
    ],
)
def test_weights_table_errors_name_variant_and_field(tmp_path: Path, change: dict, expected: str) -> None:
    entry = {k: v for k, v in {**_GOOD, **change}.items() if v is not ...}
    path = _write_table(tmp_path, {"schema": 1, "weights": {"sadcl_coco_448": entry}})
    with pytest.raises(WeightsTableError, match=expected) as info:
        W.load_weights_table(path)
    assert "'sadcl_coco_448'" in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize(
    "content, expected",
    [
        ('{"schema": 2, "weights": {}}', "schema"),
        ('{"weights": {}}', "schema"),
        ('{"schema": 1}', '"weights"'),
        ('{"schema": 1, "weights": {"v": 3}}', "variant 'v' must be null or an object"),
        ('{"schema": 1, "weights": {}, "extra": 1}', "unknown top-level"),
        ("[1, 2]", "schema"),
        ("{oops", "not valid JSON"),
    ],
)
def test_weights_table_structure_errors(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "weights.json"
    path.write_text(content)
    with pytest.raises(WeightsTableError, match=expected):
        W.load_weights_table(path)


def test_weights_table_missing_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsTableError, match="not found"):
        W.load_weights_table(tmp_path / "nope.json")
    assert W.WEIGHTS_TABLE_PATH == Path(W.__file__).resolve().parent / "weights.json"


# ----------------------------------------------------------------------------- resolve_checkpoint
def test_user_checkpoint_path_wins_and_is_not_checked_against_the_record(fake_hub, published, tmp_path) -> None:
    record, _ = published
    mine = tmp_path / "finetuned.safetensors"
    ST.save_safetensors({"w": torch.zeros(2)}, mine)
    assert W.resolve_checkpoint(record, variant="tiny", checkpoint_path=mine) == mine
    assert W.resolve_checkpoint(None, variant="tiny", checkpoint_path=mine) == mine
    assert fake_hub.requests == []


def test_bad_user_checkpoint_path(tmp_path: Path) -> None:
    with pytest.raises(CheckpointFileError, match="does not exist"):
        W.resolve_checkpoint(None, variant="tiny", checkpoint_path=tmp_path / "missing.safetensors")
    (tmp_path / "model.pth").write_bytes(b"\x80\x04")
    with pytest.raises(CheckpointFileError, match="not a .safetensors file"):
        W.resolve_checkpoint(None, variant="tiny", checkpoint_path=tmp_path / "model.pth")


def test_variant_without_weights() -> None:
    with pytest.raises(NoPretrainedWeightsError, match="'tiny' has no pretrained checkpoint"):
        W.resolve_checkpoint(None, variant="tiny")


def test_packaged_checkpoint_is_verified_and_preferred(fake_hub, published, tmp_path, monkeypatch) -> None:
    record, content = published
    monkeypatch.setattr(W, "_ZOO_DIR", tmp_path)
    packaged = tmp_path / "checkpoints" / "tiny.safetensors"
    packaged.parent.mkdir()
    packaged.write_bytes(content)
    local = _record(content, record.revision, file="checkpoints/tiny.safetensors")

    assert W.resolve_checkpoint(local, variant="tiny") == packaged
    assert fake_hub.requests == []

    packaged.write_bytes(content[:-1] + b"!")
    with pytest.raises(ChecksumError, match="packaged checkpoint of 'tiny' is corrupt"):
        W.resolve_checkpoint(local, variant="tiny")


def test_missing_packaged_checkpoint(fake_hub, published, tmp_path, monkeypatch) -> None:
    record, content = published
    monkeypatch.setattr(W, "_ZOO_DIR", tmp_path)
    with pytest.raises(CheckpointFileError, match="installation is incomplete"):
        W.resolve_checkpoint(_record(content, None, file="checkpoints/gone.safetensors"), variant="tiny")
    # With a Hub copy the download is the fallback.
    path = W.resolve_checkpoint(_record(content, record.revision, file="checkpoints/gone.safetensors"), variant="tiny")
    assert path.read_bytes() == content


# ----------------------------------------------------------------------------- safetensors I/O
def test_save_is_atomic_and_returns_sha256(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "out" / "ckpt.safetensors"
    digest = ST.save_safetensors({"a": torch.arange(6.0).reshape(2, 3).t()}, path, {"k": "v"})  # non-contiguous
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # usual permissions, not a private temp file's
    state_dict, metadata = ST.read_safetensors(path)
    assert torch.equal(state_dict["a"], torch.arange(6.0).reshape(2, 3).t()) and metadata == {"k": "v"}

    real_open = open

    def crash_while_writing(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if "w" in mode and str(file).endswith(".tmp"):
            handle.write(b"partial")
            handle.close()
            raise OSError("disk full")
        return handle

    monkeypatch.setattr("builtins.open", crash_while_writing)
    before = path.read_bytes()
    with pytest.raises(OSError, match="disk full"):
        ST.save_safetensors({"a": torch.zeros(1)}, path)
    assert path.read_bytes() == before  # the previous checkpoint is untouched
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.safetensors"]  # no temporary file left


def test_save_rejects_non_string_metadata(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="'epoch'"):
        ST.save_safetensors({"a": torch.zeros(1)}, tmp_path / "x.safetensors", {"epoch": 3})  # type: ignore[dict-item]


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_read_invalid_safetensors_names_the_file(tmp_path: Path, checkpoint_bytes: bytes, damage: str) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(checkpoint_bytes[: len(checkpoint_bytes) // 2] if damage == "truncate" else b"not a checkpoint")
    with pytest.raises(CheckpointFileError, match="bad.safetensors") as info:
        ST.read_safetensors(path)
    assert isinstance(info.value, WeightsError)


def test_read_missing_safetensors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointFileError, match="not found"):
        ST.read_safetensors(tmp_path / "missing.safetensors")
