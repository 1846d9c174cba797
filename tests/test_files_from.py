"""``sadcl predict --files-from LIST``: the images named by a list file (or standard input), streamed."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pytest
from clicheck import one_error_line
from test_tagging import BATCH, NAMES, images, predict_cli, read_jsonl, snapshot, stop_after, tiny, walked

import sadcl
from sadcl.cli import main
from sadcl.tagging.paths import iter_images, iter_listed

__all__ = ["images", "tiny"]  # module fixtures of test_tagging, used here


def listing(folder: Path, names: list[str]) -> bytes:
    return "".join(f"{folder / n}\n" for n in names).encode()


LISTABLE = [n for n in NAMES if "\n" not in n and "\r" not in n]  # one name per line: no line breaks in names


def test_list_lines_come_after_the_arguments_and_read_like_them(tiny, images, tmp_path, monkeypatch):
    """Absolute and relative paths, a folder (walked), CRLF line ends and blank lines; scores as the library's."""
    monkeypatch.chdir(images)
    lst = tmp_path / "list.txt"
    lst.write_bytes(b"a.png\r\n\n  \n" + f"{images / 'c.jpg'}\n".encode() + f"{images / 'sub'}".encode())
    assert list(iter_listed(str(lst))) == ["a.png", str(images / "c.jpg"), str(images / "sub")]
    expected = [str(images / "f.png"), "a.png", str(images / "c.jpg"), str(images / "sub" / "s.png")]
    assert list(iter_images([str(images / "f.png")], files_from=str(lst))) == expected
    out = tmp_path / "t.jsonl"
    assert predict_cli(tiny, images, "--output", str(out), "--files-from", str(lst), str(images / "f.png")) == 0
    records = read_jsonl(out)
    assert [r["image"] for r in records] == expected
    model, _ = tiny
    for rec, exp in zip(records, sadcl.predict(model, expected, batch_size=BATCH, workers=0)):
        assert list(rec["scores"].items()) == list(exp.items())


def test_a_list_alone_and_an_interrupted_list_job_resumed(tiny, images, tmp_path, capsys, monkeypatch):
    lst = tmp_path / "list.txt"
    lst.write_bytes(listing(images, LISTABLE))
    whole, out = tmp_path / "whole.csv", tmp_path / "out.csv"
    assert predict_cli(tiny, images, "--output", str(whole), "--files-from", str(lst)) == 0
    with monkeypatch.context() as m:
        stop_after(m, 2)
        assert predict_cli(tiny, images, "--output", str(out), "--files-from", str(lst)) == 130
    capsys.readouterr()
    assert predict_cli(tiny, images, "--output", str(out), "--resume", "--files-from", str(lst)) == 0
    assert out.read_bytes() == whole.read_bytes()
    assert capsys.readouterr().out == f"{out}: {len(LISTABLE)} images ({len(LISTABLE) - 2 * BATCH} new)\n"


def test_standard_input(tiny, images, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(listing(images, LISTABLE))))
    out = tmp_path / "t.jsonl"
    assert predict_cli(tiny, images, "--output", str(out), "--files-from", "-") == 0
    assert [r["image"] for r in read_jsonl(out)] == [str(images / n) for n in LISTABLE]
    # --resume reads the inputs twice (the file's records, then the rest): standard input cannot be read again
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert predict_cli(tiny, images, "--output", str(out), "--resume", "--files-from", "-") == 2
    one_error_line(capsys.readouterr().err, "predict", "--resume", "--files-from -", "list file")
    assert snapshot(tmp_path) == before


def test_the_list_is_streamed(tmp_path, monkeypatch):
    """Names are read as they are needed: the first comes before the list's end is reached."""

    class Endless(io.RawIOBase):
        lines = 0

        def readable(self):
            return True

        def readinto(self, b):
            self.lines += 1
            if self.lines > 3:
                raise AssertionError("read past the names asked for")
            data = f"img{self.lines}.png\n".encode()
            b[: len(data)] = data
            return len(data)

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(Endless(), buffer_size=16)))
    it = iter_images([], files_from="-")
    assert [next(it), next(it)] == ["img1.png", "img2.png"]


@pytest.mark.parametrize(
    "make,needles",
    [
        (lambda d: d / "missing.txt", ["--files-from list not found", "missing.txt"]),
        (lambda d: d, ["--files-from list", "directory"]),
        (lambda d: (os.mkfifo(d / "fifo"), d / "fifo")[1], ["--files-from list", "FIFO"]),  # never opened: would block
        (lambda d: (d / "long.txt").write_bytes(b"a" * 70000) and d / "long.txt", ["long.txt: line 1 is longer"]),
    ],
)
def test_a_bad_list_is_one_line_and_writes_nothing(tiny, images, tmp_path, capsys, monkeypatch, make, needles):
    lst = make(tmp_path)
    before = snapshot(tmp_path)
    out = tmp_path / "t.jsonl"
    assert predict_cli(tiny, images, "--output", str(out), "--files-from", str(lst)) == 2
    one_error_line(capsys.readouterr().err, "predict", *needles)
    assert snapshot(tmp_path) == before


def test_no_images_at_all_is_one_line(capsys):
    assert main(["predict"]) == 2  # refused before a model is loaded
    one_error_line(capsys.readouterr().err, "predict", "no images given", "--files-from LIST")


def test_names_as_walked_match_a_list_of_them(tiny, images, tmp_path):
    """A folder given on the command line and the list of its files give the same file."""
    lst = tmp_path / "list.txt"
    lst.write_bytes(listing(images, sorted(LISTABLE)))
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert predict_cli(tiny, images, "--output", str(a), "--files-from", str(lst)) == 0
    assert (
        predict_cli(tiny, images, "--output", str(b), *[p for p in walked(images) if "\n" not in p and "\r" not in p])
        == 0
    )
    assert a.read_bytes() == b.read_bytes()


def test_standard_input_is_refused_under_torchrun():
    """Each torchrun process reads all the inputs (and deals itself its batches): they cannot share one stdin."""
    from sadcl.tagging.job import JobOptions, _check_inputs
    from sadcl.tagging.shard import Group

    _check_inputs(JobOptions(images=[], files_from="-"), Group())
    with pytest.raises(ValueError, match="under torchrun every process reads the inputs: give --files-from a list"):
        _check_inputs(JobOptions(images=[], files_from="-"), Group(rank=1, world=2))


def test_a_nul_separated_list_holds_names_with_line_breaks(tiny, images, tmp_path, capsys, monkeypatch):
    """--null: ``find -print0`` lists, where a name may hold a line break; the records are those of a walk."""
    data = b"".join(str(images / n).encode() + b"\0" for n in NAMES)
    (tmp_path / "list0").write_bytes(data[:-1])  # the last name without its NUL: still read
    listed, walked_out = tmp_path / "listed.csv", tmp_path / "walked.csv"
    assert predict_cli(tiny, images, "--output", str(listed), "--files-from", str(tmp_path / "list0"), "--null") == 0
    given = [str(images / n) for n in NAMES]
    assert predict_cli(tiny, images, "--output", str(walked_out), *given) == 0
    assert listed.read_bytes() == walked_out.read_bytes()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"\0\0" + data)))  # empty entries skipped
    assert list(iter_images([], files_from="-", null=True)) == given
    capsys.readouterr()
    assert predict_cli(tiny, images, "--null", str(images / "a.png")) == 2
    one_error_line(capsys.readouterr().err, "predict", "--null", "--files-from LIST")
    (tmp_path / "long0").write_bytes(b"a.png\0" + b"b" * 70000)
    assert predict_cli(tiny, images, "--files-from", str(tmp_path / "long0"), "--null") == 2
    one_error_line(capsys.readouterr().err, "predict", "long0: name 2 is longer than 65536 bytes", "per name")
