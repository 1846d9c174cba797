"""Edge cases of `sadcl train` / `sadcl eval` (issue 11): nothing of an earlier run is replaced unless asked,
a finished run is left alone, bad settings are refused at the door in the command's words, missing images are
found before the first epoch, a worker's error is one line, and a full disk tears no file. Each CLI case checks
the exit code, the one-line message and that no file outside the command's own outputs changed."""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sadcl import _atomic, create_model
from sadcl.cli import main
from sadcl.data.datasets import CSVDataset, MultiLabelDataset, unwrap_worker_errors
from sadcl.data.images import ImageLoadError
from sadcl.train import evaluation as evaluation_mod
from sadcl.train.checkpoint import export_weights, load_training_checkpoint
from sadcl.train.config import ConfigError, TrainConfig
from sadcl.train.evaluation import evaluate_model
from sadcl.train.trainer import train

pytestmark = pytest.mark.filterwarnings("ignore::sadcl.metrics.NoPositiveClassWarning")
TINY = [
    "--model",
    "sadcl_tiny",
    "--model-arg",
    "hidden_dim=32",
    "--model-arg",
    "ffn_dim=32",
    "--model-arg",
    "proj_dim=16",
    "--img-size",
    "32",
    "--batch-size",
    "4",
    "--num-workers",
    "0",
    "--no-progress",
    "--objective",
    "asl",
]
STALE = ".last.pt.0123456789ab.tmp"  # what atomic_write leaves when the process is killed mid-write


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_csv(folder: Path, n: int, name: str, seed: int = 0) -> Path:
    """``n`` random 24×20 PNGs listed in ``folder/name.csv`` with labels from {cat, dog}."""
    rng = np.random.default_rng(seed)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(folder / "img" / f"{name}_{i}.png")
        rows.append([f"img/{name}_{i}.png", ("cat", "dog", "cat|dog")[i % 3]])
    path = folder / f"{name}.csv"
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["image", "labels"], *rows])
    return path


def snapshot(root: Path, mtimes: bool = True) -> dict[str, str]:
    """Every file under ``root`` (hidden ones included) → sha256 of its bytes (and its mtime)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest() + (
                f" {p.stat().st_mtime_ns}" if mtimes else ""
            )
    return out


def one_line(text: str) -> str:
    lines = text.strip("\n").splitlines()
    assert len(lines) == 1, text
    return lines[0]


@pytest.fixture
def data(tmp_path):
    return write_csv(tmp_path, 4, "train")


def run_train(data: Path, out: Path, *extra: str) -> int:
    return main(["train", "--data", str(data), *TINY, "--epochs", "1", "--output", str(out), *extra])


# ----------------------------------------------------------------------------- an existing --output
def test_train_refuses_an_output_folder_holding_a_run(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_train(data, out) == 0
    capsys.readouterr()
    before = snapshot(tmp_path)
    assert run_train(data, out) == 2
    err = one_line(capsys.readouterr().err)
    assert err == (
        f"sadcl train: error: --output {out} already holds a run (last.pt, best.safetensors, config.json, "
        f"log.jsonl); continue it with --resume {out}, or pass --overwrite to replace the files train "
        "writes (last.pt, best.safetensors, config.json, log.jsonl; other files are kept)"
    )
    assert snapshot(tmp_path) == before

    # Any file counts; the Python API has the same rule, in its own words.
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    assert run_train(data, other) == 2
    err = one_line(capsys.readouterr().err)
    assert f"--output {other} already holds files (notes.txt); pick another --output, or pass --overwrite" in err
    with pytest.raises(ConfigError, match=r"output_dir .* already holds files \(notes.txt\).* overwrite=True"):
        train(TrainConfig(data={"path": str(data)}, output_dir=str(other), model="sadcl_tiny", epochs=1))
    assert snapshot(tmp_path) == before


def test_overwrite_replaces_only_the_files_train_writes(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_train(data, out) == 0
    (out / "notes.txt").write_text("keep me")
    (out / STALE).write_bytes(b"half a checkpoint")
    (out / ".notes.txt.0123456789ab.tmp").write_text("not ours")
    old_log = (out / "log.jsonl").read_text()
    assert run_train(data, out, "--overwrite") == 0
    assert (out / "notes.txt").read_text() == "keep me"
    assert not (out / STALE).exists() and (out / ".notes.txt.0123456789ab.tmp").exists()
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["event"] for r in log].count("start") == 1 and not (out / "log.jsonl").read_text().startswith(old_log)
    assert load_training_checkpoint(out)["epoch"] == 1


# ----------------------------------------------------------------------------- resuming
def test_resume_of_a_finished_run_changes_nothing(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_train(data, out) == 0
    capsys.readouterr()
    before = snapshot(tmp_path)
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0  # nothing to do is not an error
    captured = capsys.readouterr()
    assert captured.err == ""
    assert one_line(captured.out) == (
        f"sadcl train: run {out} is already finished (all 1 epochs are done); nothing was changed. To train "
        f"further, start a new run with --checkpoint {out / 'best.safetensors'}"
    )
    assert snapshot(tmp_path) == before


def test_resume_of_an_early_stopped_run(data, tmp_path, capsys, monkeypatch):
    """Stopped early (patience 0: EMA mAP 10 then 5) is finished; a larger --patience continues it."""
    script = iter([10.0, 10.0, 5.0, 5.0, 7.0, 7.0])  # (raw, ema) mAP of epochs 0, 1, 2

    def scripted(scores, targets, **kwargs):
        value = next(script)
        return {key: value for key in evaluation_mod.LOGGED_METRICS} | {"num_images": len(scores)}

    monkeypatch.setattr(evaluation_mod, "compute_metrics", scripted)
    val = write_csv(tmp_path, 3, "val", seed=1)
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(data),
                "--val-data",
                str(val),
                *TINY,
                "--epochs",
                "4",
                "--patience",
                "0",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    assert load_training_checkpoint(out)["epoch"] == 2
    capsys.readouterr()
    before = snapshot(tmp_path)
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    assert (
        "is already finished (it stopped early after epoch 1 with --patience 0; a larger --patience "
        "continues it)" in one_line(capsys.readouterr().out)
    )
    assert snapshot(tmp_path) == before
    assert main(["train", "--resume", str(out), "--patience", "5", "--stop-after-epochs", "1", "--no-progress"]) == 0
    assert load_training_checkpoint(out)["epoch"] == 3


def test_resume_refuses_changed_settings_naming_both_values(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_train(data, out, "--epochs", "2", "--stop-after-epochs", "1") == 0
    capsys.readouterr()
    before = snapshot(tmp_path)
    assert main(["train", "--resume", str(out), "--batch-size", "2", "--seed", "3", "--lr", "5e-5"]) == 2
    err = one_line(capsys.readouterr().err)
    assert err.startswith(
        "sadcl train: error: cannot change on resume: --batch-size (the run has 4, given 2), "
        "--seed (the run has 1, given 3); a resumed run keeps its settings"
    )
    assert "--lr" not in err  # the recipe default, unchanged: repeating a setting is fine
    assert f"--checkpoint {out}/best.safetensors" in err
    assert snapshot(tmp_path) == before


def test_resume_with_other_workers_warns_and_cleans_up(data, tmp_path, capsys):
    """Same settings repeated are accepted; another --num-workers warns in one line (not bit-exact any more);
    temporary files of interrupted writes and a torn last log line are removed, nothing else."""
    out = tmp_path / "run"
    assert run_train(data, out, "--epochs", "2", "--stop-after-epochs", "1") == 0
    capsys.readouterr()
    (out / STALE).write_bytes(b"half")
    (out / ".log.jsonl.abcdef012345.tmp").write_bytes(b"half")
    (out / ".mine.abcdef012345.tmp").write_bytes(b"a file of the user's")
    with open(out / "log.jsonl", "a") as f:
        f.write('{"event": "ste')  # a process killed inside a log write
    assert main(["train", "--resume", str(out), "--batch-size", "4", "--num-workers", "1", "--no-progress"]) == 0
    err = one_line(capsys.readouterr().err)
    assert err.startswith(
        "sadcl train: warning: resuming with --num-workers 1 (the run used 0): the run will not continue bit-exactly"
    )
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == [".mine.abcdef012345.tmp"]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["event"] for r in log].count("start") == 2 and load_training_checkpoint(out)["epoch"] == 2


# ----------------------------------------------------------------------------- a full disk
def test_append_line_is_whole_or_nothing(tmp_path, monkeypatch):
    path = tmp_path / "log.jsonl"
    _atomic.append_line(path, '{"a": 1}\n')
    real = os.write

    def half_then_full(fd, data):
        real(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(OSError, match=f"could not append to {path}: No space left on device") as err:
        _atomic.append_line(path, '{"b": 2}\n')
    assert err.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert path.read_text() == '{"a": 1}\n'


def test_full_disk_on_resume_leaves_every_file_intact(data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert run_train(data, out, "--epochs", "2", "--stop-after-epochs", "1") == 0
    capsys.readouterr()
    before = snapshot(tmp_path, mtimes=False)  # the failed append truncates log.jsonl back: same bytes
    real = os.write

    def full_on_log_lines(fd, data):  # the disk fills up in the middle of the next log record
        if bytes(data[:9]) == b'{"time": ':
            real(fd, bytes(data[:20]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(os, "write", full_on_log_lines)
    assert main(["train", "--resume", str(out), "--no-progress"]) == 2
    monkeypatch.undo()
    err = one_line(capsys.readouterr().err)
    assert err == (
        f"sadcl train: error: could not append to {out / 'log.jsonl'}: No space left on device; "
        "its earlier records are intact"
    )
    assert snapshot(tmp_path, mtimes=False) == before
    assert all(json.loads(line) for line in (out / "log.jsonl").read_text().splitlines())
    assert load_training_checkpoint(out)["epoch"] == 1


# ----------------------------------------------------------------------------- validation at the door
@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["--loss-weights", "1", "nan", "50"],
            "--loss-weights must be three finite numbers >= 0 (ASL, SSCL, PSCL), got [1.0, nan, 50.0]",
        ),
        (
            ["--loss-weights", "1", "-1", "50"],
            "--loss-weights must be three finite numbers >= 0 (ASL, SSCL, PSCL), got [1.0, -1.0, 50.0]",
        ),
        (["--gamma-neg", "nan"], "--gamma-neg must be a finite number >= 0, got nan"),
        (["--gamma-neg", "-1"], "--gamma-neg must be a finite number >= 0, got -1.0"),
        (["--sample-temperature", "0"], "--sample-temperature must be a finite number > 0, got 0.0"),
        (["--prototype-temperature", "inf"], "--prototype-temperature must be a finite number > 0, got inf"),
        (["--threshold", "1.5"], "--threshold must be a number in [0, 1], got 1.5"),
        (["--memory-threshold", "nan"], "--memory-threshold must be a number in [0, 1], got nan"),
        (["--epochs", "0"], "--epochs must be an integer >= 1, got 0"),
        (["--batch-size", "-4"], "--batch-size must be an integer >= 1, got -4"),
        (["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
        (["--num-workers", "-1"], "--num-workers must be an integer >= 0, got -1"),
        (["--pretrained", "--checkpoint", "w.safetensors"], "give either --pretrained or --checkpoint, not both"),
    ],
)
def test_train_refuses_bad_settings_before_any_work(args, message, data, tmp_path, capsys):
    before = snapshot(tmp_path)
    assert main(["train", "--data", str(data), "--output", str(tmp_path / "run"), *args]) == 2
    assert one_line(capsys.readouterr().err) == f"sadcl train: error: {message}"
    assert snapshot(tmp_path) == before and not (tmp_path / "run").exists()


def test_trainconfig_names_keywords():
    for kwargs, message in [
        (dict(loss_weights=(1, float("nan"), 50)), "loss_weights must be three finite"),
        (dict(gamma_neg=float("nan")), "gamma_neg must be a finite number >= 0"),
        (dict(threshold=-0.1), "threshold must be a number in [0, 1]"),
        (dict(epochs=2.5), "epochs must be an integer >= 1, got 2.5"),
    ]:
        with pytest.raises(ConfigError) as err:
            TrainConfig(**kwargs)
        assert str(err.value).startswith(message)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--batch-size", "0"], "--batch-size must be an integer >= 1, got 0"),
        (["--threshold", "nan"], "--threshold must be a number in [0, 1], got nan"),
        (["--num-workers", "-2"], "--num-workers must be an integer >= 0, got -2"),
    ],
)
def test_eval_refuses_bad_settings(args, message, data, tmp_path, capsys):
    before = snapshot(tmp_path)
    assert (
        main(["eval", "--model", "sadcl_tiny", "--data", str(data), "--output", str(tmp_path / "e.json"), *args]) == 2
    )
    assert one_line(capsys.readouterr().err) == f"sadcl eval: error: {message}"
    assert snapshot(tmp_path) == before


def test_missing_validation_images_stop_the_run_before_the_first_epoch(data, tmp_path, capsys):
    val = write_csv(tmp_path, 4, "val", seed=1)
    (tmp_path / "img" / "val_1.png").unlink()
    (tmp_path / "img" / "val_3.png").unlink()
    os.mkfifo(tmp_path / "img" / "val_3.png")  # a FIFO would block its reader forever
    before = snapshot(tmp_path)
    out = tmp_path / "run"
    assert (
        main(["train", "--data", str(data), "--val-data", str(val), *TINY, "--epochs", "1", "--output", str(out)]) == 2
    )
    assert one_line(capsys.readouterr().err) == (
        f"sadcl train: error: validation image {tmp_path / 'img' / 'val_1.png'} is missing or not a regular file "
        "(2 of 4 validation images are; checked before any work). Fix the paths, or drop unreadable images with "
        "--skip-bad (DataSpec.skip_bad)"
    )
    assert snapshot(tmp_path) == before and not out.exists()


# ----------------------------------------------------------------------------- DataLoader worker errors
def test_worker_errors_arrive_as_the_workers_one_line(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    loader = torch.utils.data.DataLoader(MultiLabelDataset([bad], [[1.0]], ["x"]), num_workers=1)
    with pytest.raises(ImageLoadError) as err, unwrap_worker_errors():
        list(loader)
    assert str(err.value) == f"cannot load image {bad}: not a recognised image file"
    assert "Original Traceback" in err.value.worker_traceback  # kept for debugging, not shown
    with pytest.raises(ZeroDivisionError, match="^division by zero$"), unwrap_worker_errors():  # any type
        list(torch.utils.data.DataLoader(_Divide(), num_workers=1))
    with pytest.raises(ValueError, match="^plain$"), unwrap_worker_errors():  # other errors pass unchanged
        raise ValueError("plain")


class _Divide(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int):
        return 1 / 0


def test_unreadable_image_in_train_and_eval_is_one_line(data, tmp_path, capsys):
    weights = tmp_path / "w.safetensors"
    model = create_model("sadcl_tiny", label_names=["cat", "dog"], img_size=32, hidden_dim=32, ffn_dim=32, proj_dim=16)
    export_weights(model, weights)
    (tmp_path / "img" / "train_2.png").write_bytes(b"\x89PNG truncated")  # passes the stat check, fails to decode
    out = tmp_path / "run"
    with pytest.raises(ImageLoadError) as err:  # the Python API gets the one line too
        train(
            TrainConfig(
                data={"path": str(data)},
                output_dir=str(out),
                model="sadcl_tiny",
                img_size=32,
                model_args={"hidden_dim": 32, "ffn_dim": 32, "proj_dim": 16},
                epochs=1,
                batch_size=4,
                num_workers=1,
                objective="asl",
                progress=False,
            )
        )
    assert str(err.value).startswith(f"cannot load image {tmp_path / 'img' / 'train_2.png'}: ")
    assert "\n" not in str(err.value)
    before = snapshot(tmp_path)
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(weights),
                "--data",
                str(data),
                "--num-workers",
                "1",
                "--output",
                str(tmp_path / "e.json"),
            ]
        )
        == 2
    )
    err_line = one_line(capsys.readouterr().err)
    assert err_line.startswith(f"sadcl eval: error: cannot load image {tmp_path / 'img' / 'train_2.png'}: ")
    assert snapshot(tmp_path) == before


def test_evaluation_checks_its_image_files_first(data, tmp_path):
    (tmp_path / "img" / "train_0.png").unlink()
    model = create_model("sadcl_tiny", label_names=["cat", "dog"], img_size=32, hidden_dim=32, ffn_dim=32, proj_dim=16)
    with pytest.raises(
        ImageLoadError,
        match=r"^evaluation image .*train_0.png is missing or not a regular file "
        r"\(1 of 4 evaluation images are",
    ):
        evaluate_model(model, CSVDataset(data), num_workers=0)
    with pytest.raises(ConfigError, match=r"^batch_size must be an integer >= 1, got 0$"):
        evaluate_model(model, CSVDataset(data), batch_size=0)
