"""`sadcl predict --output FILE` writes the job's settings to FILE.job.json, and `--resume` refuses a job whose
settings changed (other weights with the same labels, --threshold, --top-k, the preprocessing): JSON Lines and
CSV files do not say which settings wrote them (sadcl/tagging/record.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from clicheck import one_error_line, save_model
from PIL import Image

import sadcl
from sadcl.cli import main
from sadcl.tagging import record
from sadcl.zoo.export import export_model
from sadcl.zoo.weights import sha256_file

BATCH = 2
N_IMAGES = 5


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    """Images, two checkpoints of ``sadcl_tiny`` with the same labels and other weights, and two export folders
    of the first one's weights that differ only in their preprocessing's mean."""
    d = tmp_path_factory.mktemp("record")
    (d / "imgs").mkdir()
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        Image.fromarray(rng.integers(0, 255, (20 + 3 * i, 24, 3), dtype=np.uint8)).save(d / "imgs" / f"{i}.png")
    for seed, name in ((0, "a"), (1, "b")):
        torch.manual_seed(seed)
        model = sadcl.create_model("sadcl_tiny").eval()
        save_model(model, d / f"{name}.safetensors")
        if name == "a":
            export_model(model, d / "export")
    shutil.copytree(d / "export", d / "export_mean")
    config = json.loads((d / "export_mean" / "config.json").read_text())
    config["pretrained_cfg"]["mean"] = [0.5, 0.5, 0.5]
    (d / "export_mean" / "config.json").write_text(json.dumps(config))
    return d


def snapshot(*folders: Path) -> dict[str, tuple[bytes, int]]:
    """Every file's bytes and mtime under ``folders``."""
    return {
        str(p): (p.read_bytes(), p.stat().st_mtime_ns) for f in folders for p in sorted(f.rglob("*")) if p.is_file()
    }


def predict(shared: Path, *extra: str, model: tuple[str, ...] | None = None) -> int:
    """``sadcl predict`` of the shared images (by default with checkpoint a)."""
    model = model or ("--checkpoint", str(shared / "a.safetensors"))
    return main(["predict", *model, "--batch-size", str(BATCH), "--workers", "0", *extra, str(shared / "imgs")])


def job_file(out: Path) -> Path:
    return Path(f"{out}.job.json")


def stopped_copy(whole: Path, out: Path, records: int) -> None:
    """``out`` as a job stopped after ``records`` records of ``whole`` leaves it (with its settings record)."""
    lines = whole.read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(lines[: records + (whole.suffix == ".csv")]))
    job_file(out).write_bytes(job_file(whole).read_bytes())


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_record_says_what_decides_the_records_and_survives_a_resume(shared, tmp_path, capsys, suffix):
    whole, out = tmp_path / f"whole{suffix}", tmp_path / f"out{suffix}"
    assert predict(shared, "--threshold", "0.25", "--output", str(whole)) == 0
    rec = json.loads(job_file(whole).read_text())
    ckpt = shared / "a.safetensors"
    assert rec["model"] == {
        "argument": f"--checkpoint {ckpt}",
        "variant": "sadcl_tiny",
        "sha256": sha256_file(ckpt),
        "of": "file",
    }
    assert rec["labels"] == list(sadcl.create_model("sadcl_tiny").label_names)
    assert rec["transform"]["input_size"] == [3, 64, 64] and rec["transform"]["interpolation"] == "bilinear"
    assert (rec["threshold"], rec["top_k"], rec["output"], rec["sadcl"]) == (0.25, None, suffix[1:], sadcl.__version__)
    assert len(job_file(whole).read_bytes()) < 4096  # small
    # Stopped after 3 records, resumed with the same settings: the uninterrupted file, the record untouched.
    stopped_copy(whole, out, 3)
    before = job_file(out).stat().st_mtime_ns
    capsys.readouterr()
    assert predict(shared, "--threshold", "0.25", "--output", str(out), "--resume") == 0
    assert out.read_bytes() == whole.read_bytes()
    assert job_file(out).read_bytes() == job_file(whole).read_bytes() and job_file(out).stat().st_mtime_ns == before
    assert capsys.readouterr().err == ""


A = ("--checkpoint", "SHARED/a.safetensors")  # the first job's model unless a case says otherwise
CHANGES = {  # first job's model and options, the resumed job's, what the one line says
    "weights": (
        (A, ()),
        (("--model", "sadcl_tiny", "--checkpoint", "SHARED/b.safetensors"), ()),
        "weights sha256 A12 (--checkpoint SHARED/a.safetensors), now B12 (--model sadcl_tiny --checkpoint SHARED/b",
    ),
    "threshold": ((A, ("--threshold", "0.5")), (A, ("--threshold", "0.7")), "with --threshold 0.5, now 0.7;"),
    "threshold-added": ((A, ()), (A, ("--threshold", "0.7")), "with no --threshold, now --threshold 0.7;"),
    "top-k": ((A, ("--top-k", "2")), (A, ("--top-k", "3")), "with --top-k 2, now 3;"),
    "top-k-dropped": ((A, ("--top-k", "2")), (A, ()), "with --top-k 2, now none;"),
    "mean": (
        (("--model", "SHARED/export"), ()),
        (("--model", "SHARED/export_mean"), ()),
        "with the model's preprocessing mean [0.485, 0.456, 0.406], now [0.5, 0.5, 0.5];",
    ),
}


@pytest.mark.parametrize("case", CHANGES)
def test_resume_refuses_changed_settings_in_one_line(shared, tmp_path, capsys, case):
    (model1, opts1), (model2, opts2), needle = CHANGES[case]

    def args(options):
        return tuple(a.replace("SHARED", str(shared)) for a in options)

    out = tmp_path / "out.jsonl"
    assert predict(shared, *opts1, "--output", str(out), model=args(model1)) == 0
    stopped_copy(out, out, 3)  # stopped after 3 records
    before = snapshot(tmp_path, shared)
    capsys.readouterr()
    assert predict(shared, *opts2, "--output", str(out), "--resume", model=args(model2)) == 2
    a12, b12 = sha256_file(shared / "a.safetensors")[:12], sha256_file(shared / "b.safetensors")[:12]
    needle = needle.replace("SHARED", str(shared)).replace("A12", a12).replace("B12", b12)
    one_error_line(
        capsys.readouterr().err, "predict", f"--resume: {out} was written ", needle, "start over with --overwrite"
    )
    assert snapshot(tmp_path, shared) == before


def test_a_file_without_record_resumes_with_one_warning(shared, tmp_path, capsys):
    whole, out = tmp_path / "whole.csv", tmp_path / "out.csv"
    assert predict(shared, "--output", str(whole)) == 0
    stopped_copy(whole, out, 2)
    job_file(out).unlink()  # written by a sadcl without settings records
    capsys.readouterr()
    assert predict(shared, "--output", str(out), "--resume") == 0
    assert out.read_bytes() == whole.read_bytes()
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"sadcl predict: warning: --resume: {out} has no settings record ({job_file(out)};")
    assert "could not be verified" in err
    assert not job_file(out).exists()  # never claims settings it did not check
    # A file without records yet: nothing can be mixed up, the record is written and the job goes on silently.
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert predict(shared, "--output", str(empty), "--resume") == 0
    assert capsys.readouterr().err == ""
    assert record.read(empty) == json.loads(job_file(whole).read_text()) | {"output": "jsonl"}


GARBLED = [
    (b"{not json", "is not JSON"),
    (b"[]", "is not a settings record of `sadcl predict`"),
    (b"[" * 100_000, "is not JSON"),  # nesting deeper than the parser's recursion
    (json.dumps({"format": record.FORMAT, "version": 99}).encode(), "version 99"),
    (b" " * (record.MAX_BYTES + 1), "larger than 1,048,576 bytes"),
]


@pytest.mark.parametrize("content,needle", GARBLED, ids=["json", "list", "deep", "version", "large"])
def test_a_garbled_record_is_refused_and_overwrite_replaces_it(shared, tmp_path, capsys, content, needle):
    out = tmp_path / "out.jsonl"
    assert predict(shared, "--output", str(out)) == 0
    good = job_file(out).read_bytes()
    job_file(out).write_bytes(content)
    before = snapshot(tmp_path, shared)
    capsys.readouterr()
    assert predict(shared, "--output", str(out), "--resume") == 2
    one_error_line(capsys.readouterr().err, "predict", f"--resume: {job_file(out)} ", needle, "--overwrite")
    assert snapshot(tmp_path, shared) == before
    assert predict(shared, "--output", str(out), "--overwrite") == 0
    assert job_file(out).read_bytes() == good


def test_a_record_in_a_wrong_field_is_refused(shared, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    assert predict(shared, "--output", str(out)) == 0
    rec = json.loads(job_file(out).read_text())
    rec["model"]["sha256"] = "../../etc/passwd"  # compared only, never a path: but not a sha256 either
    job_file(out).write_text(json.dumps(rec))
    assert predict(shared, "--output", str(out), "--resume") == 2
    one_error_line(capsys.readouterr().err, "predict", str(job_file(out)), '"sha256" is not 64', "--overwrite")


@pytest.mark.parametrize("flags", [(), ("--resume",)])
def test_a_foreign_file_where_the_record_goes_is_never_replaced(shared, tmp_path, capsys, flags):
    out = tmp_path / "out.jsonl"
    job_file(out).write_bytes(b"my notes\n")
    before = snapshot(tmp_path, shared)
    assert predict(shared, "--output", str(out), *flags) == 2
    one_error_line(capsys.readouterr().err, "predict", f"--output {out}: {job_file(out)} ", "move it", "--overwrite")
    assert snapshot(tmp_path, shared) == before
    assert predict(shared, "--output", str(out), "--overwrite") == 0  # asked for: replaced
    assert record.read(out)["model"]["sha256"] == sha256_file(shared / "a.safetensors")


def test_a_stale_record_of_ours_is_replaced_and_overwrite_keeps_an_old_job_until_its_first_record(
    shared, tmp_path, capsys
):
    out = tmp_path / "out.jsonl"
    assert predict(shared, "--threshold", "0.5", "--output", str(out)) == 0
    out.unlink()  # the output deleted, its record left behind: a fresh job replaces it
    assert predict(shared, "--top-k", "2", "--output", str(out)) == 0
    assert (record.read(out)["threshold"], record.read(out)["top_k"]) == (None, 2)
    # --overwrite that fails before its first record: the old job's file and record are both still there.
    bad = tmp_path / "bad" / "x.png"
    bad.parent.mkdir()
    bad.write_bytes(b"broken")
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(shared / "a.safetensors"), "--workers", "0", "--output", str(out),
                 "--overwrite", str(bad)]) == 2  # fmt: skip
    one_error_line(capsys.readouterr().err, "predict", "x.png")
    assert snapshot(tmp_path) == before
    # A folder in the record's place cannot be replaced even with --overwrite, nor read by --resume.
    other = tmp_path / "other.jsonl"
    job_file(other).mkdir()
    assert predict(shared, "--output", str(other), "--overwrite") == 2
    one_error_line(capsys.readouterr().err, "predict", f"{job_file(other)} is in the way", "directory", "move it")
    assert not other.exists()
    other.write_bytes(b"")
    assert predict(shared, "--output", str(other), "--resume") == 2
    one_error_line(capsys.readouterr().err, "predict", f"{job_file(other)} is in the way", "directory", "move it")
    assert other.read_bytes() == b""


def test_weights_without_a_file_are_known_by_their_tensors(shared):
    torch.manual_seed(0)
    a = sadcl.create_model("sadcl_tiny")
    torch.manual_seed(1)
    b = sadcl.create_model("sadcl_tiny")
    ident = record.weights_identity(a)
    assert ident["of"] == "state_dict" and ident == record.weights_identity(a)
    assert record.weights_identity(b) != ident
    with torch.no_grad():
        next(a.parameters()).view(-1)[0] += 1e-6  # one weight, barely: another model
    assert record.weights_identity(a) != ident
    # Loaded from a file: that file's sha256; from an export: the sha256 its config.json verified.
    from_file = sadcl.create_model(str(shared / "a.safetensors"))
    assert record.weights_identity(from_file) == {"sha256": sha256_file(shared / "a.safetensors"), "of": "file"}
    exported = sadcl.create_model(str(shared / "export"))
    assert record.weights_identity(exported)["sha256"] == sha256_file(shared / "export" / "model.safetensors")


def test_a_moved_checkpoint_is_the_same_model(shared, tmp_path, capsys):
    whole, out = tmp_path / "whole.jsonl", tmp_path / "out.jsonl"
    assert predict(shared, "--output", str(whole)) == 0
    stopped_copy(whole, out, 1)
    moved = shutil.copy(shared / "a.safetensors", tmp_path / "moved.safetensors")
    assert predict(shared, "--output", str(out), "--resume", model=("--checkpoint", str(moved))) == 0
    assert out.read_bytes() == whole.read_bytes()
    assert record.read(out)["model"]["argument"] == f"--checkpoint {shared / 'a.safetensors'}"  # as begun


def test_an_empty_output_takes_the_settings_of_the_job_resuming_it(shared, tmp_path, capsys):
    """A job stopped after emptying its file but before its first batch: no record can be mixed up."""
    out = tmp_path / "out.jsonl"
    assert predict(shared, "--threshold", "0.5", "--output", str(out)) == 0
    out.write_bytes(b"")
    capsys.readouterr()
    assert predict(shared, "--threshold", "0.7", "--output", str(out), "--resume") == 0
    assert capsys.readouterr().err == ""
    assert record.read(out)["threshold"] == 0.7 and len(out.read_bytes().splitlines()) == N_IMAGES
