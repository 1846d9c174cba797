"""`sadcl predict` as a tagging job (sadcl/tagging): --output .jsonl/.csv written per batch, --resume after an
interruption or a torn last record, --overwrite, --recursive walks, streamed stdout, the progress bar; the
torchrun split is in test_tagging_torchrun.py."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from clicheck import one_error_line, save_model
from PIL import Image

import sadcl
import sadcl.inference
from sadcl.cli import main
from sadcl.tagging import output, shard
from sadcl.tagging.paths import check_folders, iter_images

# Names a CSV must quote (comma, quote, newline, carriage return) and a leading '=': written exactly, read back.
NAMES = ["a.png", 'b,"comma".png', "c.jpg", "d\nnew line.png", "e\rcr.png", "f.png", "=g.png"]
BATCH = 2


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """``sadcl_tiny`` (64 px) with random weights, and its checkpoint."""
    torch.manual_seed(0)
    model = sadcl.create_model("sadcl_tiny").eval()
    return model, save_model(model, tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Seven images of mixed sizes and formats, some with names a CSV must quote, plus a sub-folder."""
    d = tmp_path_factory.mktemp("tagging") / "imgs"
    (d / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, name in enumerate(NAMES):
        Image.fromarray(rng.integers(0, 255, (30 + 7 * i, 40, 3), dtype=np.uint8)).save(
            d / name, format="JPEG" if name.endswith(".jpg") else "PNG"
        )
    Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(d / "sub" / "s.png")
    return d


def walked(folder: Path) -> list[str]:
    return sorted(str(folder / n) for n in NAMES)


def predict_cli(tiny, images, *extra: str) -> int:
    _, ckpt = tiny
    return main(["predict", "--checkpoint", str(ckpt), "--batch-size", str(BATCH), "--workers", "0", *extra])


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        return list(csv.reader(f))


# -- the files hold what sadcl.predict returns -------------------------------------------------------------
def test_jsonl_holds_the_library_scores_exactly(tiny, images, tmp_path, capsys):
    model, _ = tiny
    out = tmp_path / "tags.jsonl"
    assert predict_cli(tiny, images, "--output", str(out), str(images)) == 0
    expected = sadcl.predict(model, walked(images), batch_size=BATCH, workers=0)
    records = read_jsonl(out)
    assert [r["image"] for r in records] == walked(images)  # sorted, top level only, names exact
    for rec, exp in zip(records, expected):
        assert list(rec["scores"].items()) == list(exp.items())  # every digit (repr), best first
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == f"{out}: {len(NAMES)} images\n"


def test_csv_has_every_label_in_model_order_and_quotes_names(tiny, images, tmp_path):
    model, _ = tiny
    out = tmp_path / "tags.csv"
    assert predict_cli(tiny, images, "--top-k", "3", "--output", str(out), str(images)) == 0
    rows = read_csv(out)
    assert rows[0] == ["image", *model.label_names, "error"]
    expected = sadcl.predict(model, walked(images), batch_size=BATCH, workers=0, top_k=3)
    assert [r[0] for r in rows[1:]] == walked(images)
    for row, exp in zip(rows[1:], expected):
        cells = dict(zip(model.label_names, row[1:-1]))
        assert {n: float(v) for n, v in cells.items() if v} == exp  # the top 3, exact; other cells empty
        assert sum(1 for v in cells.values() if v) == 3 and row[-1] == ""
    assert out.read_bytes().count(b"\r\n") == len(NAMES) + 1  # CRLF record ends; \r and \n in names are quoted


def test_skipped_and_nan_images_are_records_and_exit_1(tiny, tmp_path, capsys, nan_logits):
    _, ckpt = tiny
    d = tmp_path / "imgs"
    d.mkdir()
    Image.new("RGB", (30, 30), "red").save(d / "a.png")
    (d / "b.png").write_bytes(b"not an image")
    Image.new("RGB", (30, 30), "blue").save(d / "c.png")
    nan_logits((0, 0))  # one label of every batch's first image
    jsonl, table = tmp_path / "t.jsonl", tmp_path / "t.csv"
    base = ["predict", "--checkpoint", str(ckpt), "--workers", "0", "--skip-bad", "--top-k", "1"]
    assert main([*base, "--output", str(jsonl), str(d)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0].startswith("sadcl predict: skipped: ") and "b.png" in err[0]
    # The NaN is not among the top-1 labels shown, and still reported: every score is checked.
    assert err[1].startswith("sadcl predict: warning: NaN scores for 1 of 2 images (") and "a.png" in err[1]
    recs = read_jsonl(jsonl)
    assert recs[1] == {"image": str(d / "b.png"), "error": recs[1]["error"]} and "b.png" in recs[1]["error"]
    assert len(recs[0]["scores"]) == 1 and "\n" not in recs[1]["error"]
    assert main([*base[:-2], "--output", str(table), str(d)]) == 1
    rows = read_csv(table)
    assert rows[1][1] == "nan" and rows[2][-1] == recs[1]["error"] and set(rows[2][1:-1]) == {""}
    assert main([*base[:-2], "--output", str(tmp_path / "nan.jsonl"), str(d / "a.png")]) == 1
    assert read_jsonl(tmp_path / "nan.jsonl")[0]["scores"][sadcl.create_model("sadcl_tiny").label_names[0]] is None


# -- resume --------------------------------------------------------------------------------------------------
def stop_after(monkeypatch, batches: int) -> None:
    """iter_predict yields ``batches`` batches, then the job is interrupted (Ctrl-C)."""
    real = sadcl.inference.iter_predict

    def interrupted(*args, **kwargs):
        it = real(*args, **kwargs)
        for _ in range(batches):
            yield next(it)
        it.close()
        raise KeyboardInterrupt

    monkeypatch.setattr(sadcl.inference, "iter_predict", interrupted)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_interrupted_job_resumed_gives_the_uninterrupted_file(tiny, images, tmp_path, capsys, monkeypatch, suffix):
    whole, out = tmp_path / f"whole{suffix}", tmp_path / f"out{suffix}"
    assert predict_cli(tiny, images, "--output", str(whole), str(images)) == 0
    with monkeypatch.context() as m:
        stop_after(m, 2)
        assert predict_cli(tiny, images, "--output", str(out), str(images)) == 130
    assert out.read_bytes() == whole.read_bytes()[: len(out.read_bytes())]  # 2 whole batches, nothing torn
    assert len(read_csv(out) if suffix == ".csv" else read_jsonl(out)) == 2 * BATCH + (suffix == ".csv")
    assert capsys.readouterr().err == (
        f"sadcl predict: stopped with {2 * BATCH} images in {out}; the same command with --resume continues the job\n"
        "interrupted\n"
    )
    assert predict_cli(tiny, images, "--output", str(out), "--resume", str(images)) == 0
    assert out.read_bytes() == whole.read_bytes()
    assert capsys.readouterr().out == f"{out}: {len(NAMES)} images ({len(NAMES) - 2 * BATCH} new)\n"
    assert predict_cli(tiny, images, "--output", str(out), "--resume", str(images)) == 0  # a finished job
    assert out.read_bytes() == whole.read_bytes()
    assert "nothing to do" in capsys.readouterr().out


@pytest.mark.parametrize(
    "suffix,cut",
    [
        (".jsonl", lambda data: data.rindex(b'"scores"')),  # inside the last record
        (".csv", lambda data: data.rindex(b"\r\n", 0, len(data) - 2) + 5),  # inside the last record
        (".csv", lambda data: data.index(b"d\nnew") + 2),  # inside a quoted name, just after its newline
        (".csv", lambda data: data.index(b"\r\n") + 1),  # inside the header's line end
        (".jsonl", lambda data: 0),  # an empty file
        # 1 record: a batch held in part, scored again whole (batched otherwise, image 2 differs by 3e-8 here)
        (".jsonl", lambda data: data.index(b"\n") + 9),
    ],
)
def test_a_torn_last_record_is_cut_and_scored_again(tiny, images, tmp_path, capsys, suffix, cut):
    whole, out = tmp_path / f"whole{suffix}", tmp_path / f"out{suffix}"
    assert predict_cli(tiny, images, "--output", str(whole), str(images)) == 0
    data = whole.read_bytes()
    out.write_bytes(data[: cut(data)])
    Path(f"{out}.job.json").write_bytes(Path(f"{whole}.job.json").read_bytes())  # as the stopped job left it
    capsys.readouterr()
    assert predict_cli(tiny, images, "--output", str(out), "--resume", str(images)) == 0
    assert out.read_bytes() == data
    err = capsys.readouterr().err
    if cut(data):
        assert len(err.splitlines()) == 1 and "cut a torn last record" in err and str(out) in err
    else:
        assert err == ""


def test_resume_refuses_another_models_labels_and_changed_inputs(tiny, images, tmp_path, capsys):
    torch.manual_seed(1)
    other = save_model(
        sadcl.create_model("sadcl_tiny", label_names=[f"x{i}" for i in range(20)]), tmp_path / "o.safetensors"
    )
    for suffix, needle in ((".csv", "label column 1 is 'x0'"), (".jsonl", "has the label 'x")):
        out = tmp_path / f"tags{suffix}"
        assert main(["predict", "--checkpoint", str(other), "--workers", "0", "--output", str(out), str(images)]) == 0
        Path(f"{out}.job.json").unlink()  # as an older sadcl wrote it: the records' labels are what is checked
        before = snapshot(tmp_path)
        capsys.readouterr()
        assert predict_cli(tiny, images, "--output", str(out), "--resume", str(images)) == 2
        one_error_line(capsys.readouterr().err, "predict", f"--output {out} was written for other labels", needle)
        assert snapshot(tmp_path) == before
    # The same model on other inputs: record 1 is not input 1 any more.
    out = tmp_path / "mine.jsonl"
    assert predict_cli(tiny, images, "--output", str(out), str(images / "a.png")) == 0
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert predict_cli(tiny, images, "--output", str(out), "--resume", str(images / "c.jpg")) == 2
    one_error_line(capsys.readouterr().err, "predict", "record 1 of --output", "a.png", "c.jpg", "inputs changed")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "content,needle",
    [
        (b'{"image": "a.png"}\n', "line 1 is not a record"),
        (b"image,x,error\r\n", "other labels"),
        (b"[1]\n", ""),
        (b"my notes, no line end", "its last line is not a record"),  # .jsonl: not a torn record, never cut
        (b"image;x", "its last line is not a record"),  # .csv: not a torn header
    ],
)
def test_resume_refuses_a_file_it_did_not_write(tiny, images, tmp_path, capsys, content, needle):
    out = tmp_path / ("tags.csv" if content.startswith(b"image") else "tags.jsonl")
    out.write_bytes(content)
    assert predict_cli(tiny, images, "--output", str(out), "--resume", str(images)) == 2
    one_error_line(capsys.readouterr().err, "predict", f"--output {out}", needle)
    assert out.read_bytes() == content


def test_resume_reads_a_bounded_line(tiny, images, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(output, "MAX_RECORD_BYTES", 100)
    out = tmp_path / "t.jsonl"
    out.write_bytes(b"[" * 1000)  # no newline: would otherwise be read whole
    assert predict_cli(tiny, images, "--output", str(out), "--resume", str(images)) == 2
    one_error_line(capsys.readouterr().err, "predict", f"--output {out} has a line longer than")
    assert out.read_bytes() == b"[" * 1000


def test_a_file_another_job_is_writing_is_refused(tiny, images, tmp_path, capsys):
    """A requeued job started while the first still runs: the first holds the file's lock."""
    import fcntl

    out = tmp_path / "t.csv"
    assert predict_cli(tiny, images, "--output", str(out), str(images)) == 0
    before = snapshot(tmp_path)
    capsys.readouterr()
    with open(out, "rb") as other_job:
        fcntl.flock(other_job, fcntl.LOCK_EX)
        for flag in ("--resume", "--overwrite"):
            assert predict_cli(tiny, images, "--output", str(out), flag, str(images)) == 2
            one_error_line(capsys.readouterr().err, "predict", f"--output {out} is being written by another job")
            assert snapshot(tmp_path) == before
    assert predict_cli(tiny, images, "--output", str(out), "--resume", str(images)) == 0  # the lock is gone


# -- refusals at the door ------------------------------------------------------------------------------------
def test_an_existing_output_is_refused_unless_resume_or_overwrite(tiny, images, tmp_path, capsys):
    out = tmp_path / "tags.jsonl"
    out.write_text("precious\n")
    before = snapshot(tmp_path)
    assert predict_cli(tiny, images, "--output", str(out), str(images)) == 2
    one_error_line(capsys.readouterr().err, "predict", f"--output {out} exists", "--resume", "--overwrite")
    assert snapshot(tmp_path) == before
    # --overwrite, but the first batch fails: the old file is still there (it is replaced by the first result).
    (tmp_path / "bad.png").write_bytes(b"broken")
    assert predict_cli(tiny, images, "--output", str(out), "--overwrite", str(tmp_path / "bad.png")) == 2
    one_error_line(capsys.readouterr().err, "predict", "bad.png")
    assert out.read_text() == "precious\n"
    assert predict_cli(tiny, images, "--output", str(out), "--overwrite", str(images)) == 0
    assert len(read_jsonl(out)) == len(NAMES)


@pytest.mark.parametrize(
    "args,needles",
    [
        (["--output", "OUT/tags.txt"], ["--output", "tags.txt", "'.txt'", "*.jsonl", "*.csv"]),
        (["--output", "OUT/tags"], ["(no extension)", "*.jsonl"]),
        (["--output", "OUT/tags.jsonl", "--json"], ["--json", "--output"]),
        (["--resume"], ["--resume needs --output"]),
        (["--output", "OUT"], ["--output", "directory"]),
        (["--output", "OUT/pipe.csv", "--overwrite"], ["--output", "pipe.csv", "FIFO"]),  # never opened: it would block
    ],
)
def test_bad_output_options_are_one_line_and_write_nothing(tiny, images, tmp_path, capsys, args, needles):
    os.mkfifo(tmp_path / "pipe.csv")
    before = snapshot(tmp_path)
    args = [a.replace("OUT", str(tmp_path)) for a in args]
    assert predict_cli(tiny, images, *args, str(images)) == 2
    one_error_line(capsys.readouterr().err, "predict", *needles)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("value", ["-1", "2.5", "many"])
def test_workers_is_checked_at_the_door(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as stop:
        main(["predict", "--workers", value, str(tmp_path / "x.png")])
    assert stop.value.code == 2
    one_error_line(
        capsys.readouterr().err, "predict", f"argument --workers: must be a whole number >= 0, got {value!r}"
    )


def test_resume_and_overwrite_exclude_each_other(tiny, images, tmp_path, capsys):
    with pytest.raises(SystemExit):
        predict_cli(tiny, images, "--output", str(tmp_path / "t.csv"), "--resume", "--overwrite", str(images))
    assert "not allowed with argument" in capsys.readouterr().err


# -- walking -------------------------------------------------------------------------------------------------
def test_recursive_walk_is_sorted_depth_first_and_ends_symlink_loops(tmp_path):
    root = tmp_path / "root"
    for rel in ("b.png", "a/z.jpg", "a/y/x.png", "c.txt", "d.PNG", "a/y/w.gif"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    (root / "a" / "y" / "loop").symlink_to(root)  # back to an ancestor
    (root / "e").symlink_to(root / "a" / "y")  # a folder seen before
    os.mkfifo(root / "fifo.png")
    got = [os.path.relpath(p, root) for p in iter_images([str(root)], recursive=True)]
    assert got == ["a/y/w.gif", "a/y/x.png", "a/z.jpg", "b.png", "d.PNG"]
    assert [os.path.relpath(p, root) for p in iter_images([str(root) + "/"])] == ["b.png", "d.PNG"]
    assert list(iter_images(["x.png", "https://h/i.png"])) == ["x.png", "https://h/i.png"]  # as given
    (tmp_path / "empty" / "deep").mkdir(parents=True)
    (tmp_path / "empty" / "deep" / "i.png").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match=r"in folder .*empty \(--recursive also reads its sub-folders\)"):
        check_folders([str(tmp_path / "empty")])
    check_folders([str(tmp_path / "empty")], recursive=True)


def test_walk_is_streamed(tmp_path, monkeypatch):
    """The first image comes out before the next folder is even listed."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "i.png").write_bytes(b"x")
    listed = []
    scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda p: listed.append(os.path.basename(p)) or scandir(p))
    walk = iter_images([str(tmp_path)], recursive=True)
    assert next(walk).endswith("a/i.png") and "b" not in listed
    assert next(walk).endswith("b/i.png") and "b" in listed


def test_recursive_cli_reads_sub_folders(tiny, images, tmp_path):
    out = tmp_path / "r.jsonl"
    assert predict_cli(tiny, images, "--recursive", "--output", str(out), str(images)) == 0
    assert [r["image"] for r in read_jsonl(out)] == sorted(walked(images) + [str(images / "sub" / "s.png")])


# -- stdout, streamed -----------------------------------------------------------------------------------------
def test_stdout_prints_each_batch_as_it_is_scored(tiny, images, capsys, monkeypatch):
    stop_after(monkeypatch, 1)
    assert predict_cli(tiny, images, str(images)) == 130
    assert len(capsys.readouterr().out.splitlines()) == BATCH  # the first batch was out before the interruption


def test_json_stdout_is_the_whole_object_printed_in_pieces(tiny, images, capsys):
    model, _ = tiny
    assert predict_cli(tiny, images, "--json", "--top-k", "2", str(images)) == 0
    out = capsys.readouterr().out
    expected = sadcl.predict(model, walked(images), batch_size=BATCH, workers=0, top_k=2)
    assert out == json.dumps(dict(zip(walked(images), expected)), indent=2) + "\n"


def test_progress_bar_on_a_terminal_only(tiny, images, tmp_path, capsys, monkeypatch):
    out = tmp_path / "t.jsonl"
    assert predict_cli(tiny, images, "--output", str(out), str(images)) == 0
    assert capsys.readouterr().err == ""  # not a terminal: no bar
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert predict_cli(tiny, images, "--output", str(out), "--overwrite", str(images)) == 0
    err = capsys.readouterr().err
    assert "image/s" in err and f"{len(NAMES)}/{len(NAMES)}" in err  # the total, counted in the background
    assert predict_cli(tiny, images, "--output", str(out), "--overwrite", "--no-progress", str(images)) == 0
    assert capsys.readouterr().err == ""


# -- rounds: the same order for any number of processes -------------------------------------------------------
@pytest.mark.parametrize("world", [1, 2, 3])
def test_dealt_batches_in_rank_order_are_the_input_order(world):
    items = list(range(11))
    mine = [list(shard.dealt(items, 2, shard.Group(rank=r, world=world))) for r in range(world)]
    assert sorted(i for m in mine for i in m) == items
    rounds = [list(shard.chunks(m, 2)) for m in mine]
    merged = [i for k in range(len(rounds[0])) for r in range(world) if k < len(rounds[r]) for i in rounds[r][k]]
    assert merged == items
    assert [b for b in shard.rounds(iter(shard.chunks(items, 2)), 2, shard.Group())] == list(shard.chunks(items, 2))


def test_csv_reader_and_writer_round_trip_undecodable_names(tmp_path):
    from sadcl.tagging.output import ExistingOutput, Record, Writer, output_file

    name = os.fsdecode(b"caf\xe9 \xff.png")  # a file name that is not UTF-8: lone surrogates in Python
    for suffix in (".csv", ".jsonl"):
        out = output_file(tmp_path / f"t{suffix}", ["x", "y"])
        writer = Writer(out)
        writer.write([Record(name, {"y": 0.25, "x": 0.5})])
        writer.close()
        existing = ExistingOutput(out)
        assert list(existing.images()) == [name]
        existing.close()
    assert (tmp_path / "t.csv").read_bytes().endswith(b"caf\xe9 \xff.png,0.5,0.25,\r\n")  # the name's own bytes
    (tmp_path / "t.jsonl").read_bytes().decode("utf-8")  # JSON Lines stays valid UTF-8 (\udcXX escapes)


def test_url_credentials_never_reach_the_output_and_resume_still_matches(tiny, images, tmp_path, capsys):
    url = "http://user:secret@127.0.0.1:9/x.png"  # the discard port: nothing listens, refused at once
    out = tmp_path / "t.jsonl"
    assert predict_cli(tiny, images, "--skip-bad", "--output", str(out), url) == 1
    assert "secret" not in out.read_text() and "secret" not in capsys.readouterr().err
    assert read_jsonl(out)[0]["image"] == "http://127.0.0.1:9/x.png"
    assert predict_cli(tiny, images, "--skip-bad", "--output", str(out), "--resume", url) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_memory_stays_flat_however_many_images(tiny, tmp_path, monkeypatch):
    """The job keeps nothing per image: 10x the images, the same peak (the model is faked, the job is real)."""
    import tracemalloc

    from sadcl.inference import Prediction
    from sadcl.tagging import job

    def fake_predict(model, images, *, batch_size, **kwargs):
        for chunk in shard.chunks(images, batch_size):
            yield [Prediction(0, item, {"x": 0.5, "y": float("nan")}, None) for item in chunk]

    monkeypatch.setattr(sadcl.inference, "iter_predict", fake_predict)
    peaks = []
    for n in (500, 5_000):
        monkeypatch.setattr(
            job, "iter_images", lambda items, recursive, files_from, null, n=n: (f"img{i:06d}.png" for i in range(n))
        )
        out = tmp_path / f"{n}.csv"
        tracemalloc.start()
        assert predict_cli(tiny, tmp_path, "--batch-size", "50", "--output", str(out), "x.png") == 1  # NaN: exit 1
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert out.read_bytes().count(b"\n") == n + 1
    assert peaks[1] - peaks[0] < 100_000, peaks  # a list of the 5,000 names alone would take ~350 kB


def test_an_unreadable_image_stops_the_job_with_what_to_do_and_resume_continues_once_fixed(
    tiny, images, tmp_path, capsys
):
    """Without --skip-bad the first unreadable image stops the job; the line names it, says how to go on and that
    the batches before it are kept; once the file is fixed, --resume gives the uninterrupted file."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("a.png", "b.png", "c.png", "d.png"):
        (folder / name).write_bytes((images / "a.png").read_bytes())
    whole, out = tmp_path / "whole.jsonl", tmp_path / "out.jsonl"
    assert predict_cli(tiny, images, "--output", str(whole), str(folder)) == 0
    good = (folder / "c.png").read_bytes()
    (folder / "c.png").write_bytes(good[:40])  # truncated: in the second batch
    capsys.readouterr()
    assert predict_cli(tiny, images, "--output", str(out), str(folder)) == 2
    one_error_line(
        capsys.readouterr().err,
        "predict",
        "c.png",
        "pass --skip-bad to go on past unreadable images",
        f"the first {BATCH} images are in {out}: the same command with --resume continues",
    )
    (folder / "c.png").write_bytes(good)
    assert predict_cli(tiny, images, "--output", str(out), "--resume", str(folder)) == 0
    assert out.read_bytes() == whole.read_bytes()
    assert predict_cli(tiny, images, str(folder / "c.png"), str(tmp_path / "missing.png")) == 2  # stdout: no file
    err = one_error_line(capsys.readouterr().err, "predict", "missing.png", "--skip-bad")
    assert "--resume" not in err
