"""Untrusted files at every edge: special files, damaged and hostile checkpoints, bomb and corrupt images.

Each case asserts the exit code (CLI) or the error type (API), one line naming the file, and that nothing
else in the folder changed. docs/SECURITY.md ("Model files and images") lists every case and its test.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import struct
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from sadcl._files import not_regular_reason, open_regular, regular_file
from sadcl.cli import main
from sadcl.data.images import ImageLoadError, load_image
from sadcl.zoo import convert as convert_module
from sadcl.zoo.convert import MAX_CHECKPOINT_BYTES_ENV, read_checkpoint
from sadcl.zoo.safetensors_io import read_safetensors
from sadcl.zoo.weights import CheckpointFileError

KINDS = ["FIFO", "symbolic link loop", "character device", "directory", "socket"]


# ----------------------------------------------------------------------------- helpers
def tree(root: Path) -> dict[str, tuple]:
    """Every entry under ``root`` (not following links): kind, size, mtime and, for files, the bytes."""
    out: dict[str, tuple] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            st = os.lstat(path)
            content = path.read_bytes() if path.is_file() and not path.is_symlink() else None
            out[str(path.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns, content)
    return out


def one_error_line(capsys: pytest.CaptureFixture[str], command: str, *names: str) -> str:
    """stderr of the CLI call just made: exactly one ``sadcl CMD: error:`` line naming every ``names``."""
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"sadcl {command}: error: "), err
    for name in names:
        assert name in lines[0], (name, err)
    assert "Traceback" not in err
    return lines[0]


_UNBLOCK = """
import os, sys, time
fifo, wait = sys.argv[1], float(sys.argv[2])
time.sleep(wait)
deadline = time.monotonic() + 10
while time.monotonic() < deadline and os.path.exists(fifo):
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # ENXIO while no reader waits: nothing to do
        break
    except OSError:
        time.sleep(0.1)
"""


@pytest.fixture
def unblock_after() -> Iterator[Callable[[Path], None]]:
    """``unblock_after(fifo)``: if a reader wrongly opened ``fifo`` and blocks, open its write end after 5 s so
    the test fails (a wrong result) instead of hanging forever. A separate process, because a reader blocked in
    native code (safetensors' ``safe_open``) holds the GIL; bounded, and ended with the test."""
    helpers: list[subprocess.Popen] = []

    def start(fifo: Path, seconds: float = 5.0) -> None:
        helpers.append(subprocess.Popen([sys.executable, "-c", _UNBLOCK, str(fifo), str(seconds)]))

    yield start
    for helper in helpers:
        helper.kill()
        helper.wait(timeout=10)


def png_bytes(size: tuple[int, int] = (16, 12), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 7).save(buf, format="PNG")
    return buf.getvalue()


def safetensors_file(header: object, data: bytes = b"") -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def zip_bomb(path: Path, declared: int) -> None:
    """A torch-style zip archive whose data record deflates ``declared`` zero bytes into a tiny file."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", pickle.dumps({}, protocol=2))
        with z.open("archive/data/0", "w") as f:
            chunk = bytes(1 << 20)
            for _ in range(declared >> 20):
                f.write(chunk)


@pytest.fixture
def make_special(tmp_path: Path, unblock_after: Callable[[Path], None]):
    """``make_special(kind, name)``: a FIFO, symlink loop, (link to a) character device, folder or socket
    called ``name`` in ``tmp_path``; a FIFO comes with :func:`unblock_after`, so a wrong reader cannot hang."""
    import socket

    sockets: list[socket.socket] = []

    def make(kind: str, name: str) -> Path:
        path = tmp_path / name
        if kind == "FIFO":
            os.mkfifo(path)
            unblock_after(path)
        elif kind == "symbolic link loop":
            other = tmp_path / f"{name}.other"
            path.symlink_to(other.name)
            other.symlink_to(path.name)
        elif kind == "character device":
            path.symlink_to(os.devnull)
        elif kind == "directory":
            path.mkdir()
        else:
            sock = socket.socket(socket.AF_UNIX)
            sock.bind(str(path))
            sockets.append(sock)
        return path

    yield make
    for sock in sockets:
        sock.close()


# ----------------------------------------------------------------------------- the one helper
def test_regular_file_refuses_special_files_without_opening_them(make_special, tmp_path: Path) -> None:
    for kind in KINDS:
        path = make_special(kind, kind.replace(" ", "_"))
        assert kind in not_regular_reason(path)
        with pytest.raises(CheckpointFileError, match=re.escape(f"checkpoint file {path}: it is ") + f".*{kind}"):
            regular_file(path, "checkpoint file", CheckpointFileError)
        with pytest.raises(OSError, match=kind):
            open_regular(path, "image")
    with pytest.raises(OSError, match=re.escape(f"image not found: {tmp_path / 'absent'}")):
        regular_file(tmp_path / "absent", "image")
    real = tmp_path / "real.bin"
    real.write_bytes(b"abc")
    (tmp_path / "link").symlink_to(real)  # a link to a regular file is fine
    assert regular_file(tmp_path / "link", "x") == tmp_path / "link"
    with open_regular(tmp_path / "link", "x") as f:
        assert f.read() == b"abc"


def test_open_regular_rechecks_after_a_non_blocking_open(make_special, monkeypatch: pytest.MonkeyPatch) -> None:
    """A FIFO swapped in between the stat and the open: the open does not block and the opened file is refused."""
    import sadcl._files as files

    fifo = make_special("FIFO", "swapped.png")
    monkeypatch.setattr(files, "regular_file", lambda path, what, error: Path(path))  # the stat saw a regular file
    with pytest.raises(ImageLoadError, match=re.escape(f"image {fifo}: it is not a regular file")):
        files.open_regular(fifo, "image", ImageLoadError)


# ----------------------------------------------------------------------------- images
@pytest.mark.parametrize("kind", KINDS)
def test_special_file_named_as_image_is_refused(make_special, kind: str) -> None:
    path = make_special(kind, "x.png")
    with pytest.raises(ImageLoadError, match=re.escape(f"cannot load image {path}: it is ") + f".*{kind}"):
        load_image(path)


@pytest.mark.parametrize(
    "name,content,reason",
    [
        ("zero.png", b"", "not a recognised image file"),
        ("text.png", b"hello, I am text\n", "not a recognised image file"),
        ("cut.png", png_bytes((64, 64))[:60], ""),
        ("garbage.jpg", b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4, ""),
    ],
)
def test_damaged_image_is_one_image_load_error(tmp_path: Path, name: str, content: bytes, reason: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageLoadError, match=re.escape(f"cannot load image {path}: {reason}")):
        load_image(path)


def test_valid_image_with_the_wrong_extension_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "really_a_png.jpg"
    path.write_bytes(png_bytes((5, 3), "L"))
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (5, 3) and np.asarray(out).max() == 7


@pytest.mark.parametrize(
    "side,pillow_checks",
    [
        (40, True),  # 1600 px: Pillow only warns
        (100, True),  # 10000 px: Pillow refuses
        (40, False),  # Pillow's own check not run (e.g. its warning filtered by another thread): sadcl's still is
    ],
)
def test_decompression_bomb_image_is_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, side: int, pillow_checks: bool
) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bytes((side, side), "1"))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the limit users raise or lower; default ~89 Mpx
    if not pillow_checks:
        monkeypatch.setattr(Image, "_decompression_bomb_check", lambda size: None)
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self))  # spy: never reached
    with pytest.raises(
        ImageLoadError,
        match=r"bomb.png: it declares more pixels than PIL.Image.MAX_IMAGE_PIXELS "
        r"\(1000\), possibly a decompression bomb",
    ):
        load_image(path)
    assert decoded == []


@pytest.mark.parametrize("case", ["FIFO", "zero-byte", "bomb", "symbolic link loop"])
def test_cli_predict_refuses_a_bad_image_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, unblock_after, case: str
) -> None:
    path = tmp_path / "bad.png"
    if case == "FIFO":
        os.mkfifo(path)
        unblock_after(path)
    elif case == "zero-byte":
        path.write_bytes(b"")
    elif case == "bomb":
        path.write_bytes(png_bytes((100, 100), "1"))
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    else:
        path.symlink_to(path)
    before = tree(tmp_path)
    assert main(["predict", str(path)]) == 2  # the default, shipped model
    line = one_error_line(capsys, "predict", str(path))
    assert {
        "FIFO": "FIFO",
        "zero-byte": "not a recognised image",
        "bomb": "decompression bomb",
        "symbolic link loop": "symbolic link loop",
    }[case] in line
    assert tree(tmp_path) == before


# ----------------------------------------------------------------------------- .pth checkpoints
def test_garbage_pickle_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's `printf '\\x87.' > x.pth; sadcl convert x.pth o.safetensors` (IndexError before)."""
    path = tmp_path / "x.pth"
    path.write_bytes(b"\x87.")
    with pytest.raises(CheckpointFileError, match=re.escape(f"{path} is not a readable PyTorch checkpoint")):
        read_checkpoint(path)
    before = tree(tmp_path)
    assert main(["convert", str(path), str(tmp_path / "o.safetensors")]) == 2
    one_error_line(capsys, "convert", str(path), "not a readable PyTorch checkpoint")
    assert tree(tmp_path) == before


@pytest.mark.parametrize(
    "name,content,hint",
    [
        ("text.jpg", b"hello\n", "it starts like text"),  # `error: 101` before (KeyError of the unpickler)
        ("photo.pth", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "it starts like a JPEG image"),
        ("empty.pth", b"", "the file is empty"),
        (
            "model.pth",
            safetensors_file({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, bytes(4)),
            "it starts like a safetensors file: give it the .safetensors suffix",
        ),
    ],
)
def test_not_a_checkpoint_says_what_it_looks_like(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, content: bytes, hint: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    before = tree(tmp_path)
    assert main(["convert", str(path), str(tmp_path / "out.safetensors")]) == 2
    one_error_line(capsys, "convert", str(path), hint)
    assert tree(tmp_path) == before


@pytest.mark.parametrize("damage", ["truncated zip", "zip without records", "damaged pickle", "pickle of a list"])
def test_damaged_pth_is_one_checkpoint_file_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    path = tmp_path / "damaged.pth"
    buf = io.BytesIO()
    torch.save({"state_dict": {"w": torch.arange(100.0)}}, buf)
    if damage == "truncated zip":
        path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    elif damage == "zip without records":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("readme.txt", "not a checkpoint")
    elif damage == "damaged pickle":
        path.write_bytes(b"\x80\x02}q\x00(X\x01\x00\x00\x00a")  # a dict left open
    else:
        torch.save([1, 2], path)
    before = tree(tmp_path)
    assert main(["convert", str(path), str(tmp_path / "out.safetensors")]) == 2
    one_error_line(capsys, "convert", str(path))
    assert tree(tmp_path) == before


def test_zip_bomb_is_refused_before_anything_is_decompressed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bomb.pth"
    zip_bomb(path, 64 << 20)  # 64 MiB of zeros in ~65 KB (a 2 MB file would declare ~2 GB the same way)
    assert path.stat().st_size < 200_000
    loaded = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: loaded.append(a))  # spy: must never be reached
    declared = (64 << 20) + len(pickle.dumps({}, protocol=2))
    with pytest.raises(
        CheckpointFileError,
        match=re.escape(
            f"{path} declares {declared} bytes of content in a {path.stat().st_size}-byte archive: a zip bomb"
        ),
    ):
        read_checkpoint(path)
    before = tree(tmp_path)
    assert main(["convert", str(path), str(tmp_path / "out.safetensors")]) == 2
    one_error_line(capsys, "convert", str(path), "zip bomb", "refused before decompressing anything")
    assert tree(tmp_path) == before and loaded == []


def test_checkpoint_size_limit_keyword_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    zipped, legacy = tmp_path / "zipped.pth", tmp_path / "legacy.pth"
    state = {"w": torch.arange(1000.0)}  # 4000 bytes of tensor data
    torch.save(state, zipped)
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    for path in (zipped, legacy):
        assert torch.equal(read_checkpoint(path)["w"], state["w"])  # both formats still load
        with pytest.raises(
            CheckpointFileError,
            match=re.escape(str(path)) + r" holds \d+ bytes of tensors, more than "
            rf"the limit of 1000 bytes; .*set the environment variable {MAX_CHECKPOINT_BYTES_ENV}",
        ):
            read_checkpoint(path, max_bytes=1000)
    monkeypatch.setenv(MAX_CHECKPOINT_BYTES_ENV, "1000")
    before = tree(tmp_path)
    assert main(["convert", str(zipped), str(tmp_path / "out.safetensors")]) == 2
    one_error_line(capsys, "convert", str(zipped), MAX_CHECKPOINT_BYTES_ENV)
    monkeypatch.setenv(MAX_CHECKPOINT_BYTES_ENV, "lots")
    with pytest.raises(ValueError, match=f"{MAX_CHECKPOINT_BYTES_ENV} must be a positive number of bytes, got 'lots'"):
        read_checkpoint(zipped)
    with pytest.raises(ValueError, match="max_bytes must be a positive number of bytes"):
        read_checkpoint(zipped, max_bytes=0)
    assert tree(tmp_path) == before


def test_legacy_pickle_declaring_a_huge_storage_is_refused_without_using_it(tmp_path: Path) -> None:
    """A legacy (non-zip) torch.save file whose pickle declares a 12 GB storage in a few hundred bytes: torch
    reserves the storage untouched and then fails reading it; one CheckpointFileError, no memory used."""
    import resource

    buf = io.BytesIO()
    torch.save({"w": torch.zeros(77)}, buf, _use_new_zipfile_serialization=False)
    data = buf.getvalue()
    assert data.count(b"K\x4dN") == 1  # numel 77 (BININT1), then view_metadata None, in the storage record
    path = tmp_path / "legacy_bomb.pth"
    path.write_bytes(data.replace(b"K\x4dN", b"\x8a\x08" + struct.pack("<q", 3_000_000_000) + b"N"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with pytest.raises(CheckpointFileError, match=re.escape(f"{path} is not a readable PyTorch checkpoint")):
        read_checkpoint(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 1 << 20  # < 1 GiB more at peak


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_special_file_named_as_checkpoint_is_refused(
    make_special, tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, suffix: str
) -> None:
    path = make_special(kind, "model" + suffix)
    with pytest.raises(CheckpointFileError, match=re.escape(f"checkpoint file {path}: it is ") + f".*{kind}"):
        read_checkpoint(path)
    before = tree(tmp_path)
    assert main(["convert", str(path), str(tmp_path / "out.safetensors")]) == 2
    one_error_line(capsys, "convert", str(path), kind)
    assert tree(tmp_path) == before


def test_missing_checkpoint_and_output_onto_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = tree(tmp_path)
    assert main(["convert", str(tmp_path / "absent.pth"), str(tmp_path / "out.safetensors")]) == 2
    one_error_line(capsys, "convert", "checkpoint file not found", str(tmp_path / "absent.pth"))
    path = tmp_path / "model.pth"
    torch.save({"w": torch.zeros(2)}, path)
    before = tree(tmp_path)
    assert main(["convert", str(path), str(path)]) == 2
    one_error_line(capsys, "convert", str(path), "is the checkpoint being converted")
    assert tree(tmp_path) == before


def test_convert_refuses_an_existing_output_without_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import sadcl

    torch.manual_seed(0)
    source = tmp_path / "model.pth"
    torch.save({"state_dict": sadcl.create_model("sadcl_tiny").state_dict()}, source)
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"the user's own file")
    args = ["convert", str(source), str(out), "--variant", "sadcl_tiny"]
    before = tree(tmp_path)
    assert main(args) == 2
    one_error_line(capsys, "convert", f"{out} already exists; pass --overwrite to replace it")
    assert tree(tmp_path) == before
    assert main([*args, "--overwrite"]) == 0
    assert "sadcl checkpoint" in capsys.readouterr().out and len(read_safetensors(out)[0]) > 0


def test_hostile_key_names_are_escaped_in_the_report(tmp_path: Path) -> None:
    from sadcl.zoo.convert import ConversionReport

    report = ConversionReport(source="x\x1b[2J.pth", unexpected=["evil\n\x1b[31mkey"])
    text = str(report)
    assert "\x1b" not in text and len(text.splitlines()) == 2 and "evil\\n\\x1b[31mkey" in text
    path = tmp_path / "int_keys.pth"
    torch.save({1: torch.zeros(1)}, path)
    with pytest.raises(ValueError, match=r"the entries \[1\] are not tensors under string names"):
        convert_module.load_official_checkpoint(torch.nn.Module(), path)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- safetensors
_TENSOR = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}


@pytest.mark.parametrize(
    "name,content,reason",
    [
        ("short", b"\x01\x00", "shorter than the 8-byte header length"),
        ("huge_header_length", struct.pack("<Q", 1 << 62) + b"{}", "header length says 4611686018427387904 bytes"),
        ("header_past_end", struct.pack("<Q", 80) + b'{"w": 1}', "more than the 8 bytes that follow it"),
        ("garbage", b"PK\x03\x04 this is a zip file, not safetensors", "header length says"),
        ("huge_shape", safetensors_file({"w": {**_TENSOR, "shape": [1 << 40, 1 << 30]}}, bytes(4)), "overflow"),
        (
            "shape_beyond_data",
            safetensors_file({"w": {**_TENSOR, "shape": [300_000_000], "data_offsets": [0, 1_200_000_000]}}, bytes(4)),
            "not fully covered",
        ),
        (
            "truncated_data",
            safetensors_file({"w": {**_TENSOR, "shape": [4], "data_offsets": [0, 16]}}, bytes(9)),
            "not fully covered",
        ),
        ("metadata_int", safetensors_file({"__metadata__": {"epoch": 3}, "w": _TENSOR}, bytes(4)), "expected a string"),
        ("metadata_list", safetensors_file({"__metadata__": [1], "w": _TENSOR}, bytes(4)), "expected a map"),
        ("header_list", safetensors_file([1, 2]), "invalid type: sequence"),
        ("entry_string", safetensors_file({"w": "x"}), 'invalid type: string "x"'),
        ("negative_shape", safetensors_file({"w": {**_TENSOR, "shape": [-1]}}, bytes(4)), "expected usize"),
        ("unknown_dtype", safetensors_file({"w": {**_TENSOR, "dtype": "XX"}}, bytes(4)), "unknown variant `XX`"),
        ("overlapping", safetensors_file({"a": _TENSOR, "b": _TENSOR}, bytes(4)), "invalid offset"),
        (
            "duplicate_key",
            safetensors_file(
                b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
                b'"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}',
                bytes(8),
            ),
            "invalid offset",
        ),
        ("not_utf8", safetensors_file(b'{"\xff": 1}'), "invalid UTF-8"),
    ],
)
def test_bad_safetensors_is_one_checkpoint_file_error(tmp_path: Path, name: str, content: bytes, reason: str) -> None:
    path = tmp_path / f"{name}.safetensors"
    path.write_bytes(content)
    before = tree(tmp_path)
    with pytest.raises(CheckpointFileError, match=re.escape(f"{path} is not a valid safetensors file")) as info:
        read_safetensors(path)
    message = str(info.value)
    assert reason in message and len(message.splitlines()) == 1
    assert tree(tmp_path) == before


def test_valid_safetensors_still_reads(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "ok.safetensors"
    save_file({"w": torch.arange(3.0)}, path, metadata={"k": "v"})
    state, meta = read_safetensors(path)
    assert torch.equal(state["w"], torch.arange(3.0)) and meta == {"k": "v"}
    assert torch.equal(read_checkpoint(path)["w"], torch.arange(3.0))


@pytest.mark.parametrize("content", [b"not a checkpoint", struct.pack("<Q", 1 << 62) + b"{}"])
def test_cli_predict_with_a_bad_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes) -> None:
    bad, image = tmp_path / "bad.safetensors", tmp_path / "im.png"
    bad.write_bytes(content)
    image.write_bytes(png_bytes())
    before = tree(tmp_path)
    assert main(["predict", "--checkpoint", str(bad), str(image)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and str(bad) in err and "Traceback" not in err
    assert tree(tmp_path) == before


def test_fifo_checkpoint_does_not_hang_predict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], unblock_after
) -> None:
    fifo, image = tmp_path / "fifo.safetensors", tmp_path / "im.png"
    os.mkfifo(fifo)
    image.write_bytes(png_bytes())
    unblock_after(fifo)
    assert main(["predict", "--checkpoint", str(fifo), str(image)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and str(fifo) in err and "FIFO" in err


# ----------------------------------------------------------------------------- a real process
@pytest.mark.slow
def test_console_script_prints_one_line_for_the_garbage_pickle(tmp_path: Path) -> None:
    path = tmp_path / "x.pth"
    path.write_bytes(b"\x87.")
    out = subprocess.run(
        ["sadcl", "convert", str(path), str(tmp_path / "o.safetensors")], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and str(path) in out.stderr and "Traceback" not in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.pth"]
