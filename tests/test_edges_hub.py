"""Hub edges: download deadlines, fail-fast offline, one error mapper, publishing only what an export wrote.

Every transfer uses the real huggingface_hub client against the loopback FakeHub (tests/hubserver.py) and its
upload API (tests/hubupload.py); stalled answers are bounded by the server (30 s at most, ended at stop()).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from huggingface_hub import hf_hub_download

from sadcl.cli import main
from sadcl.zoo import export as E
from sadcl.zoo import hub as H
from sadcl.zoo import weights as W
from sadcl.zoo.weights import WeightsDownloadError, WeightsRecord

REPO = "sadcl-test/edges"
FILE = "model.safetensors"
TOKEN = "hf_test_write_token"
CONTENT = bytes(range(256)) * 2
README = "---\nlibrary_name: sadcl\ntags:\n- sadcl\n---\n\n# edges\n"


def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def _cache_files(cache: Path) -> list[str]:
    """Every file in the Hub cache except lock files (huggingface_hub keeps those)."""
    if not cache.exists():
        return []
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file() and p.suffix != ".lock")


def _snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    """Files under ``root`` (the Hub's HF_HOME aside) with their mtimes and bytes."""
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink() and "hf-home" not in p.parts
    }


@pytest.fixture
def published(fake_hub) -> str:
    """``CONTENT`` published as an LFS file; returns the commit."""
    return fake_hub.add_file(REPO, FILE, CONTENT)


# ----------------------------------------------------------------------------- deadlines
def test_trickling_server_fails_at_the_deadline_and_leaves_nothing(fake_hub, published, hf_cache) -> None:
    fake_hub.stall_answers("trickle", interval=0.25)  # 512 bytes at 4 bytes/s: two minutes
    start = time.monotonic()
    with pytest.raises(WeightsDownloadError) as info:
        H.hub_download(REPO, FILE, revision=published, timeout=1.0, what="the test file")
    elapsed = time.monotonic() - start
    assert 0.9 < elapsed < 2.5
    message = _one_line(str(info.value))
    for expected in (
        "the test file",
        REPO,
        FILE,
        published,
        fake_hub.endpoint,
        "1 s download deadline",
        "SADCL_DOWNLOAD_TIMEOUT=<seconds>",
        "HF_HUB_OFFLINE=1",
        str(hf_cache),
    ):
        assert expected in message
    assert not [f for f in _cache_files(hf_cache) if "/snapshots/" in f or "/blobs/" in f]  # no .incomplete either

    fake_hub.stall_answers(None)  # the next call downloads the whole file afresh
    assert H.hub_download(REPO, FILE, revision=published, timeout=5, what="the test file").read_bytes() == CONTENT


def test_silent_server_fails_at_the_deadline(fake_hub, published) -> None:
    fake_hub.stall_answers("silent")
    start = time.monotonic()
    with pytest.raises(WeightsDownloadError, match="did not complete within the 0.8 s download deadline"):
        H.hub_download(REPO, FILE, revision=published, timeout=0.8, what="the test file")
    assert time.monotonic() - start < 2.0
    assert fake_hub.requests[:1] == [("HEAD", f"/{REPO}/resolve/{published}/{FILE}")]


def test_deadline_comes_from_the_environment(fake_hub, published, monkeypatch) -> None:
    fake_hub.stall_answers("silent")
    monkeypatch.setenv("SADCL_DOWNLOAD_TIMEOUT", "0.6")
    start = time.monotonic()
    with pytest.raises(WeightsDownloadError, match="within the 0.6 s download deadline"):
        H.hub_download(REPO, FILE, revision=published, what="the test file")
    assert time.monotonic() - start < 1.8
    fake_hub.requests.clear()
    for bad in ("soon", "0", "-1", "nan", "inf"):
        monkeypatch.setenv("SADCL_DOWNLOAD_TIMEOUT", bad)
        with pytest.raises(
            ValueError, match=f"SADCL_DOWNLOAD_TIMEOUT must be a positive number of seconds, got '{bad}'"
        ):
            H.hub_download(REPO, FILE, revision=published, what="the test file")
    with pytest.raises(ValueError, match="timeout must be a positive number of seconds, got 0"):
        H.hub_download(REPO, FILE, revision=published, timeout=0, what="the test file")
    assert fake_hub.requests == []  # refused before any request


def test_refused_endpoint_fails_fast_with_the_offline_hint(fake_hub, published, hf_cache) -> None:
    endpoint = fake_hub.endpoint
    fake_hub.stop()  # connections to the endpoint are now refused
    start = time.monotonic()
    with pytest.raises(WeightsDownloadError) as info:
        H.hub_download(REPO, FILE, revision=published, what="the test file")
    assert time.monotonic() - start < 1.5  # huggingface_hub alone retries for ~23 s
    message = _one_line(str(info.value))
    for expected in (f"the Hub at {endpoint} cannot be reached", "HF_HUB_OFFLINE=1", str(hf_cache), REPO, FILE):
        assert expected in message


def test_download_checkpoint_has_the_deadline(fake_hub, published, monkeypatch) -> None:
    record = WeightsRecord(
        hf_hub_id=REPO, filename=FILE, revision=published, sha256=hashlib.sha256(CONTENT).hexdigest(), size=len(CONTENT)
    )
    fake_hub.stall_answers("trickle", interval=0.25)
    monkeypatch.setenv("SADCL_DOWNLOAD_TIMEOUT", "0.8")
    start = time.monotonic()
    with pytest.raises(WeightsDownloadError) as info:
        W.download_checkpoint(record, variant="tiny")
    assert time.monotonic() - start < 2.0
    message = _one_line(str(info.value))
    assert "the checkpoint of 'tiny'" in message and "0.8 s download deadline" in message
    assert "pass checkpoint_path=<file>" in message


def test_cache_lock_held_elsewhere_fails_at_the_deadline(fake_hub, published, hf_cache) -> None:
    """A wait that no socket timeout bounds (here another process's lock on the blob) still ends on time."""
    from filelock import FileLock

    lock = FileLock(
        hf_cache / ".locks" / f"models--{REPO.replace('/', '--')}" / f"{hashlib.sha256(CONTENT).hexdigest()}.lock"
    )
    with lock:
        start = time.monotonic()
        with pytest.raises(WeightsDownloadError, match="within the 0.5 s download deadline"):
            H.hub_download(REPO, FILE, revision=published, timeout=0.5, what="the test file")
        assert time.monotonic() - start < 1.6
    assert not [f for f in _cache_files(hf_cache) if "/snapshots/" in f]


def test_download_deadline_context_covers_any_hub_download(fake_hub, published) -> None:
    """What timm's backbone download (a plain hf_hub_download) gets inside ``download_deadline()``; outside
    it, huggingface_hub's own behaviour is unchanged."""
    fake_hub.stall_answers("trickle", interval=0.25)
    start = time.monotonic()
    with pytest.raises(WeightsDownloadError) as info, H.download_deadline("the backbone weights", timeout=0.7):
        hf_hub_download(REPO, FILE, revision=published)
    assert time.monotonic() - start < 1.5
    message = _one_line(str(info.value))
    assert message.startswith(
        f"cannot download the backbone weights (http://{fake_hub.blob_host}:{fake_hub.port}"
        f"/lfs-blobs/{hashlib.sha256(CONTENT).hexdigest()})"
    )
    assert "0.7 s download deadline" in message
    fake_hub.stall_answers(None)
    assert Path(hf_hub_download(REPO, FILE, revision=published)).read_bytes() == CONTENT
    with pytest.raises(WeightsDownloadError, match="repository was not found"), H.download_deadline("a file"):
        hf_hub_download("nobody/nothing", FILE)
    with pytest.raises(KeyError), H.download_deadline("a file"):  # not a Hub failure: passed through
        raise KeyError("other")


def test_one_mapper_names_every_hub_failure(fake_hub, published, hub_offline, hf_cache) -> None:
    def message(**kwargs: object) -> str:
        args = dict(repo_id=REPO, filename=FILE, revision=published, what="the test file")
        args.update(kwargs)
        with pytest.raises(WeightsDownloadError) as info:
            H.hub_download(**args)  # type: ignore[arg-type]
        return _one_line(str(info.value))

    assert "repository 'nobody/nothing' was not found" in message(repo_id="nobody/nothing", if_missing="Fix it.")
    assert f"revision {'f' * 40} does not exist" in message(revision="f" * 40)
    assert "has no file 'other.bin'" in message(filename="other.bin", if_missing="Is it an export?")
    fake_hub.truncate(REPO, FILE)
    assert "was incomplete" in message()
    hub_offline(True)
    text = message(instead="load the folder by path")
    assert "HF_HUB_OFFLINE is set" in text and str(hf_cache) in text and text.endswith("load the folder by path.")


# ----------------------------------------------------------------------------- export manifests
def _file_entry(data: bytes) -> dict[str, object]:
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def _write_export(folder: Path, *, version: int = 2, onnx: bool = False) -> dict[str, object]:
    """A minimal export folder as `sadcl export` writes it (format_version 1 or 2); returns its config."""
    folder.mkdir(parents=True, exist_ok=True)
    weights, card, graph = b"weights" * 40, README.encode(), b"onnx graph"
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "README.md").write_bytes(card)
    if onnx:
        (folder / "model.onnx").write_bytes(graph)
    onnx_entry = {"filename": "model.onnx", **_file_entry(graph)} if onnx else None
    weights_entry = {"filename": "model.safetensors", **_file_entry(weights)}
    if version == 1:
        config: dict[str, object] = {
            "format": "sadcl-export",
            "format_version": 1,
            "variant": "sadcl_tiny",
            "architecture": {},
            "weights": weights_entry,
            "onnx": onnx_entry,
        }
    else:
        files = {"model.safetensors": _file_entry(weights), "README.md": _file_entry(card)}
        if onnx:
            files["model.onnx"] = _file_entry(graph)
        config = {
            "architecture": "sadcl_tiny",
            "num_classes": 2,
            "label_names": ["a", "b"],
            "model_args": {},
            "pretrained_cfg": {},
            "sadcl": {
                "format": "sadcl-export",
                "format_version": 2,
                "sadcl_version": "0",
                "variant": "sadcl_tiny",
                "source": "test",
                "weights": weights_entry,
                "onnx": onnx_entry,
                "files": files,
            },
        }
    (folder / "config.json").write_text(json.dumps(config))
    return config


def test_export_manifest_of_both_format_versions(tmp_path) -> None:
    v1 = _write_export(tmp_path / "v1", version=1, onnx=True)
    assert E.export_manifest(v1, tmp_path / "v1") == {
        "config.json": None,
        "model.safetensors": _file_entry(b"weights" * 40),
        "README.md": None,
        "model.onnx": _file_entry(b"onnx graph"),
    }
    v1["onnx"] = None
    assert list(E.export_manifest(v1, tmp_path / "v1")) == ["config.json", "model.safetensors", "README.md"]
    v2 = _write_export(tmp_path / "v2")
    assert E.export_manifest(v2, tmp_path / "v2") == {
        "config.json": None,
        "model.safetensors": _file_entry(b"weights" * 40),
        "README.md": _file_entry(README.encode()),
    }


# ----------------------------------------------------------------------------- publishing
@pytest.fixture
def export_dir(tmp_path) -> Path:
    folder = tmp_path / "export"
    _write_export(folder)
    return folder


def test_push_uploads_only_the_export_files_into_a_private_repo(hub_uploads, export_dir, capsys) -> None:
    (export_dir / ".env").write_text("HF_TOKEN=hf_secret_do_not_publish\n")
    (export_dir / "notes.txt").write_text("private notes")
    (export_dir / "runs").mkdir()
    (export_dir / "runs" / "last.pt").write_bytes(b"checkpoint")

    record = H.push_to_hub(export_dir, REPO, token=TOKEN)

    (commit,) = [c for c in hub_uploads.commits if c.summary.startswith("Upload SADCL export")]
    assert sorted(commit.files) == ["README.md", "config.json", "model.safetensors"]
    assert not any(b"hf_secret" in data for c in hub_uploads.commits for data in c.files.values())
    assert hub_uploads.private[REPO] is True
    assert record["revision"] == commit.oid and record["sha256"] == hashlib.sha256(b"weights" * 40).hexdigest()
    out = capsys.readouterr().out
    listing = out[: out.index("Pushed")]
    assert "(private if the repository is new)" in listing
    for name in ("config.json", "README.md", f"model.safetensors ({len(b'weights' * 40)} bytes)"):
        assert name in listing
    assert ".env" not in out and "notes.txt" not in out


def test_push_of_a_format_1_export_follows_its_onnx_entry(hub_uploads, tmp_path) -> None:
    with_onnx, without = tmp_path / "a", tmp_path / "b"
    _write_export(with_onnx, version=1, onnx=True)
    _write_export(without, version=1)
    (without / "model.onnx").write_bytes(b"left over from an older export")
    H.push_to_hub(with_onnx, REPO, token=TOKEN)
    H.push_to_hub(without, "sadcl-test/other", token=TOKEN)
    files = {c.repo_id: sorted(c.files) for c in hub_uploads.commits if c.summary.startswith("Upload")}
    assert files == {
        REPO: ["README.md", "config.json", "model.onnx", "model.safetensors"],
        "sadcl-test/other": ["README.md", "config.json", "model.safetensors"],
    }


def test_public_needs_to_be_asked_for(hub_uploads, export_dir) -> None:
    H.push_to_hub(export_dir, REPO, token=TOKEN, public=True)
    assert hub_uploads.private[REPO] is False
    (export_dir / "README.md").write_text(README + "\nmore\n")
    config = json.loads((export_dir / "config.json").read_text())
    config["sadcl"]["files"]["README.md"] = _file_entry((export_dir / "README.md").read_bytes())
    (export_dir / "config.json").write_text(json.dumps(config))
    commits = len(hub_uploads.commits)
    with pytest.raises(H.PublishError, match=f"Hub repository {REPO} on .* is public: pass public=True"):
        H.push_to_hub(export_dir, REPO, token=TOKEN)
    assert len(hub_uploads.commits) == commits


def _break(folder: Path, how: str) -> str:
    """Damage an export folder; return what the one-line refusal must say."""
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    if how == "no config":
        config_path.unlink()
        return "is not a SADCL export: config.json is missing; push a folder written by `sadcl export MODEL DIR`"
    if how == "not json":
        config_path.write_text("{not json")
        return "config.json is not a readable JSON file"
    if how == "other format":
        config_path.write_text(json.dumps({"architectures": ["BertModel"]}))
        return "is not a SADCL export config"
    if how == "lists .env":
        (folder / ".env").write_text("SECRET=1")
        config["sadcl"]["files"][".env"] = _file_entry(b"SECRET=1")
        config_path.write_text(json.dumps(config))
        return "lists '.env', which `sadcl export` never writes; refusing to publish"
    if how == "lists a path":
        config["sadcl"]["files"]["../model.safetensors"] = config["sadcl"]["files"]["model.safetensors"]
        config_path.write_text(json.dumps(config))
        return "never writes"
    if how == "newer":
        config["sadcl"]["format_version"] = 3
        config_path.write_text(json.dumps(config))
        return "newer sadcl"
    if how == "changed card":
        (folder / "README.md").write_text(README + "edited after export\n")
        return "README.md changed since `sadcl export` wrote it"
    if how == "missing weights":
        (folder / "model.safetensors").unlink()
        return "model.safetensors is missing"
    if how == "symlinked weights":
        target = folder.parent / "elsewhere.bin"
        (folder / "model.safetensors").rename(target)
        (folder / "model.safetensors").symlink_to(target)
        return "is not a regular file"
    if how == "bad record":
        config["sadcl"]["files"]["model.safetensors"]["size"] = "big"
        config_path.write_text(json.dumps(config))
        return '"size" must be a non-negative integer'
    raise AssertionError(how)


@pytest.mark.parametrize(
    "how",
    [
        "no config",
        "not json",
        "other format",
        "lists .env",
        "lists a path",
        "newer",
        "changed card",
        "missing weights",
        "symlinked weights",
        "bad record",
    ],
)
def test_push_refuses_what_is_not_exactly_an_export(hub_uploads, export_dir, how) -> None:
    expected = _break(export_dir, how)
    with pytest.raises(H.PublishError) as info:
        H.push_to_hub(export_dir, REPO, token=TOKEN)
    assert expected in _one_line(str(info.value))
    assert hub_uploads.hub.requests == []  # refused before talking to the Hub


# ----------------------------------------------------------------------------- sadcl push
def _push(args: list[str], capsys, tmp_path: Path) -> str:
    """Run `sadcl push` in-process; assert exit 2, one stderr line, and no file changed; return the line."""
    before = _snapshot(tmp_path)
    assert main(["push", *args]) == 2
    err = capsys.readouterr().err
    assert _snapshot(tmp_path) == before
    line = _one_line(err)
    assert line.startswith("sadcl push: error: ")
    return line


def test_cli_push_network_failures_are_one_line(hub_uploads, export_dir, hub_offline, capsys, tmp_path) -> None:
    endpoint = hub_uploads.hub.endpoint
    line = _push([str(export_dir), REPO], capsys, tmp_path)  # no token: the Hub answers 401
    assert "HTTP 401" in line and "(--token TOKEN)" in line and "token=" not in line

    hub_uploads.refuse_create = 403
    line = _push([str(export_dir), REPO, "--token", TOKEN], capsys, tmp_path)
    assert f"could not push {export_dir} to {REPO} on {endpoint}: HTTP 403" in line and "hf auth login" in line

    hub_offline(True)
    line = _push([str(export_dir), REPO, "--token", TOKEN], capsys, tmp_path)
    assert "HF_HUB_OFFLINE is set" in line and "unset HF_HUB_OFFLINE" in line
    hub_offline(False)

    hub_uploads.hub.stop()
    start = time.monotonic()
    line = _push([str(export_dir), REPO, "--token", TOKEN], capsys, tmp_path)
    assert time.monotonic() - start < 1.5
    assert f"on {endpoint}: the Hub cannot be reached" in line and "nothing was published" in line
    assert hub_uploads.commits == []


def test_cli_push_visibility_flags(hub_uploads, export_dir, capsys, tmp_path) -> None:
    assert main(["push", str(export_dir), REPO, "--token", TOKEN, "--private"]) == 0
    assert hub_uploads.private[REPO] is True
    capsys.readouterr()
    (export_dir / "README.md").write_text(README + "v2\n")
    _break(export_dir, "newer")  # any refusal names the folder in one line
    line = _push([str(export_dir), REPO, "--token", TOKEN], capsys, tmp_path)
    assert "newer sadcl" in line
    with pytest.raises(SystemExit) as info:
        main(["push", str(export_dir), REPO, "--public", "--private"])
    assert info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_cli_push_public_repo_needs_the_flag(hub_uploads, export_dir, capsys, tmp_path) -> None:
    assert main(["push", str(export_dir), "sadcl-test/open", "--token", TOKEN, "--public"]) == 0
    assert hub_uploads.private["sadcl-test/open"] is False
    capsys.readouterr()
    (export_dir / "README.md").write_text(README + "v2\n")
    config = json.loads((export_dir / "config.json").read_text())
    config["sadcl"]["files"]["README.md"] = _file_entry((export_dir / "README.md").read_bytes())
    (export_dir / "config.json").write_text(json.dumps(config))
    line = _push([str(export_dir), "sadcl-test/open", "--token", TOKEN], capsys, tmp_path)
    assert "is public: pass --public to publish into it" in line


@pytest.mark.network
@pytest.mark.slow
def test_installed_sadcl_push_offline_prints_no_traceback(fake_hub, export_dir) -> None:
    endpoint = fake_hub.endpoint
    fake_hub.stop()
    env = {**os.environ, "HF_ENDPOINT": endpoint}
    entry_point = shutil.which("sadcl")  # installed by `pip install -e .`
    assert entry_point is not None
    out = subprocess.run(
        [entry_point, "push", str(export_dir), REPO, "--token", TOKEN],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert out.returncode == 2, out.stderr
    line = _one_line(out.stderr)
    assert "Traceback" not in out.stderr and f"on {endpoint}: the Hub cannot be reached" in line


def test_backbone_weights_download_has_the_deadline_and_fails_fast(fake_hub, monkeypatch) -> None:
    """``pretrained_backbone=True`` downloads through timm → hf_hub_download, inside sadcl's deadline."""
    import sadcl

    fake_hub.add_file("timm/test_resnet.r160_in1k", "model.safetensors", CONTENT)
    fake_hub.stall_answers("trickle", interval=0.25)
    monkeypatch.setenv("SADCL_DOWNLOAD_TIMEOUT", "0.7")
    start = time.monotonic()
    with pytest.raises(WeightsDownloadError) as info:
        sadcl.create_model("sadcl_tiny", pretrained_backbone=True)
    assert time.monotonic() - start < 1.6
    message = _one_line(str(info.value))
    assert "the ImageNet weights of backbone 'test_resnet' (through timm)" in message
    assert "0.7 s download deadline" in message

    endpoint = fake_hub.endpoint
    fake_hub.stop()
    start = time.monotonic()
    with pytest.raises(WeightsDownloadError, match=f"the Hub at {endpoint} cannot be reached.*HF_HUB_OFFLINE=1"):
        sadcl.create_model("sadcl_tiny", pretrained_backbone=True)
    assert time.monotonic() - start < 1.5


def test_hf_hub_export_offline_fails_fast_and_slow_hub_meets_the_deadline(fake_hub, monkeypatch) -> None:
    """``create_model("hf-hub:…")`` downloads through hub_download: no ~23 s of retries, no endless trickle."""
    import sadcl

    fake_hub.add_file(REPO, "config.json", b'{"architecture": "sadcl_tiny"}', lfs=False)
    fake_hub.stall_answers("trickle", interval=0.25)
    monkeypatch.setenv("SADCL_DOWNLOAD_TIMEOUT", "0.6")
    start = time.monotonic()
    with pytest.raises(WeightsDownloadError, match=f"hf-hub:{REPO}.*0.6 s download deadline"):
        sadcl.create_model(f"hf-hub:{REPO}")
    assert time.monotonic() - start < 1.5

    endpoint = fake_hub.endpoint
    fake_hub.stop()
    start = time.monotonic()
    with pytest.raises(WeightsDownloadError) as info:
        sadcl.create_model(f"hf-hub:{REPO}")
    assert time.monotonic() - start < 1.5
    message = _one_line(str(info.value))
    assert f"hf-hub:{REPO}" in message and f"the Hub at {endpoint} cannot be reached" in message
    assert "HF_HUB_OFFLINE=1" in message


def test_cli_download_deadline_and_offline_are_one_line(fake_hub, hf_cache, monkeypatch, capsys, tmp_path) -> None:
    fake_hub.add_file(REPO, "config.json", b'{"architecture": "sadcl_tiny"}', lfs=False)
    fake_hub.stall_answers("trickle", interval=0.25)
    monkeypatch.setenv("SADCL_DOWNLOAD_TIMEOUT", "0.6")
    before = _snapshot(tmp_path)
    assert main(["export", f"hf-hub:{REPO}", str(tmp_path / "out")]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("sadcl export: error: cannot download") and "0.6 s download deadline" in line
    assert "SADCL_DOWNLOAD_TIMEOUT=<seconds>" in line
    endpoint = fake_hub.endpoint
    fake_hub.stop()
    assert main(["export", f"hf-hub:{REPO}", str(tmp_path / "out")]) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"the Hub at {endpoint} cannot be reached" in line and "HF_HUB_OFFLINE=1" in line
    # Nothing outside the Hub cache changed, and the cache holds no file (only huggingface_hub's locks and refs).
    assert {k: v for k, v in _snapshot(tmp_path).items() if not k.startswith("hf-cache/")} == before
    assert not [f for f in _cache_files(hf_cache) if "/snapshots/" in f or "/blobs/" in f]
