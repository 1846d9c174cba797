"""Edges of the command line and of predictions: one clear line for any failure, in the CLI's words; predict
--skip-bad; NaN never in JSON; options checked at the door; label names printed safely (docs/SECURITY.md)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from clicheck import one_error_line, save_model
from PIL import Image

import sadcl
from sadcl import cli
from sadcl._text import one_line, printable, with_details
from sadcl.cli import _cli_words, build_parser, main
from sadcl.data.images import ImageLoadError
from sadcl.inference import ImageSkippedWarning, NonFiniteScoreWarning
from sadcl.model.sadcl import resolve_labels
from sadcl.tagging.paths import iter_images


# -- helpers -------------------------------------------------------------------------------------------------
def snapshot(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file under ``folder`` with its size, mtime and first bytes (to prove nothing else changed)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and not p.is_symlink():
            st = p.stat()
            out[str(p.relative_to(folder))] = (st.st_size, st.st_mtime_ns, p.read_bytes()[:4096])
        elif not p.is_dir():
            out[str(p.relative_to(folder))] = (-1, 0, b"")  # FIFOs, links: present, never read
    return out


@pytest.fixture
def tiny(tmp_path):
    """``sadcl_tiny`` (64 px) with random weights, saved as a checkpoint in ``tmp_path/ckpt``."""
    torch.manual_seed(0)
    model = sadcl.create_model("sadcl_tiny").eval()
    (tmp_path / "ckpt").mkdir()
    return model, save_model(model, tmp_path / "ckpt" / "tiny.safetensors")


@pytest.fixture
def images(tmp_path):
    """A folder with two good PNGs, a corrupt "PNG" and a truncated JPEG."""
    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "c.png"):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(d / name)
    (d / "b_corrupt.png").write_bytes(b"not an image at all")
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(d / "full.jpg")
    (d / "d_truncated.jpg").write_bytes((d / "full.jpg").read_bytes()[:200])
    (d / "full.jpg").unlink()
    return d


def _command(monkeypatch, run):
    """Make ``sadcl list`` run ``run(args)`` (the error handling under test is the same for every command)."""
    arguments, _, help = cli.COMMANDS["list"]
    monkeypatch.setitem(cli.COMMANDS, "list", (arguments, run, help))


def _raise(error: BaseException):
    def run(args):
        raise error

    return run


# -- 1. any exception: one line, exit 2 ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "error,needles",
    [
        (IndexError("tuple index out of range"), ["IndexError: tuple index out of range", "SADCL_DEBUG=1"]),
        (AttributeError("'int' object has no attribute 'get'"), ["AttributeError", "SADCL_DEBUG=1"]),
        (MemoryError(), ["MemoryError", "(no message)"]),
        (KeyError("label_names"), ["KeyError: label_names"]),
        (KeyError("variant 'x' is not in weights.json"), ["variant 'x' is not in weights.json"]),
        (ZeroDivisionError("division by zero"), ["ZeroDivisionError"]),
        (ValueError("bad value\x1b[2J"), ["bad value\\x1b[2J"]),
    ],
)
def test_any_exception_is_one_line_exit_2(monkeypatch, capsys, tmp_path, error, needles):
    before = snapshot(tmp_path)
    _command(monkeypatch, _raise(error))
    assert main(["list"]) == 2
    captured = capsys.readouterr()
    line = one_error_line(captured.err, "list", *needles)
    assert "\x1b" not in line and captured.out == ""
    assert snapshot(tmp_path) == before


def test_sadcl_debug_keeps_the_traceback(monkeypatch):
    _command(monkeypatch, _raise(IndexError("boom")))
    monkeypatch.setenv("SADCL_DEBUG", "1")
    with pytest.raises(IndexError, match="boom"):
        main(["list"])


def test_dataloader_worker_traceback_becomes_its_last_line(monkeypatch, capsys):
    message = (
        "Caught FileNotFoundError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
        'last):\n  File "/x/worker.py", line 308, in _worker_loop\n    data = fetcher.fetch(index)\n'
        "FileNotFoundError: cannot load image imgs/missing.png: file not found\n"
    )
    _command(monkeypatch, _raise(FileNotFoundError(message)))
    assert main(["list"]) == 2
    line = one_error_line(capsys.readouterr().err, "list", "imgs/missing.png")
    assert line == "sadcl list: error: FileNotFoundError: cannot load image imgs/missing.png: file not found"


def test_a_393_kb_message_is_cut_and_verbose_prints_it_all(monkeypatch, capsys):
    keys = ", ".join(f"backbone.layer{i}.weight" for i in range(20000))
    message = (
        f"Cannot map x.pth onto SADCL:\n  checkpoint keys with no model key (20000): {keys}\n"
        "Build the model with the checkpoint's architecture, or pass strict=False to load what matches."
    )
    assert len(message) > 390_000
    _command(monkeypatch, _raise(ValueError(message)))
    assert main(["list"]) == 2
    line = one_error_line(
        capsys.readouterr().err, "list", "Cannot map x.pth", "--verbose shows the full message", "to load what matches"
    )  # the head and the advice at the end survive
    assert len(line) < 600
    for argv in (["--verbose", "list"], ["list", "--verbose"]):  # before or after the command
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "backbone.layer19999.weight" in err and len(err) > 390_000 and "Traceback" not in err


def test_details_are_printed_only_with_verbose(monkeypatch, capsys):
    """The pattern for long supporting text: ``raise with_details(ValueError(short), long)``."""
    _command(
        monkeypatch,
        _raise(with_details(ValueError("wrong variant: the file records sadcl_voc_448"), "missing keys:\nfc.W\nfc.b")),
    )
    assert main(["list"]) == 2
    line = one_error_line(capsys.readouterr().err, "list", "sadcl_voc_448", "--verbose shows the details")
    assert "fc.W" not in line
    assert main(["list", "--verbose"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "sadcl list: error: wrong variant: the file records sadcl_voc_448",
        "missing keys:",
        "fc.W",
        "fc.b",
    ]


def test_verbose_is_not_passed_on_as_a_command_option(monkeypatch):
    seen = {}

    def run(args):
        seen.update(vars(args))
        return 0

    _command(monkeypatch, run)
    assert main(["--verbose", "list", "--verbose"]) == 0
    assert "verbose" not in seen and seen["command"] == "list"


# -- missing extras ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "module,hint",
    [
        ("matplotlib", "pip install 'sadcl[viz]'"),
        ("onnxruntime", "pip install 'sadcl[onnx]'"),
        ("sklearn", "pip install scikit-learn"),
    ],
)
def test_missing_optional_module_names_the_pip_install(monkeypatch, capsys, module, hint):
    _command(monkeypatch, _raise(ModuleNotFoundError(f"No module named '{module}'", name=module)))
    assert main(["list"]) == 2
    one_error_line(capsys.readouterr().err, "list", f"{module} is not installed", hint)


def test_export_onnx_without_onnx_stops_before_writing(monkeypatch, capsys, tiny, tmp_path):
    _, ckpt = tiny
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now fails as if it were not installed
    before = snapshot(tmp_path)
    assert main(["export", str(ckpt), str(tmp_path / "out"), "--onnx"]) == 2
    one_error_line(capsys.readouterr().err, "export", "onnx is not installed", "pip install 'sadcl[onnx]'")
    assert not (tmp_path / "out").exists() and snapshot(tmp_path) == before


def test_optional_module_table_matches_pyproject():
    import tomllib

    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for module, (dist, extra) in cli._OPTIONAL_MODULES.items():
        if extra is not None:
            assert any(req.split(">")[0].split("=")[0].strip() == dist for req in extras[extra]), (module, extra)


# -- network errors --------------------------------------------------------------------------------------------
def _closed_port() -> int:
    import socket

    with socket.socket() as s:  # bound then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.network
@pytest.mark.parametrize("client", ["huggingface_hub", "requests"])
def test_connection_error_names_the_endpoint_and_offline_setting(monkeypatch, capsys, client, hub_offline, hf_cache):
    hub_offline(False)
    port = _closed_port()

    def run(args):
        if client == "requests":
            import requests

            requests.get(f"http://127.0.0.1:{port}/api/models/x", timeout=2)
        from huggingface_hub import HfApi

        HfApi(endpoint=f"http://127.0.0.1:{port}").model_info("org/name", timeout=2)

    _command(monkeypatch, run)
    assert main(["list"]) == 2
    one_error_line(
        capsys.readouterr().err,
        "list",
        f"cannot reach http://127.0.0.1:{port}",
        "HF_HUB_OFFLINE is not set",
        "HF_HUB_OFFLINE=1",
    )


def test_offline_mode_error_says_offline_is_set(monkeypatch, capsys, hub_offline, hf_cache):
    from huggingface_hub import HfApi

    hub_offline(True)
    _command(monkeypatch, lambda args: HfApi().model_info("org/name"))
    assert main(["list"]) == 2
    one_error_line(capsys.readouterr().err, "list", "HF_HUB_OFFLINE=1 is set")


# -- 2. the CLI's words -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "command,message,expected",
    [
        (
            "convert",
            "Cannot map x. Build the model with its architecture, or pass strict=False to load what matches.",
            "Cannot map x. Build the model with its architecture, or pass --non-strict to load what matches.",
        ),
        (
            "predict",
            "no weights in the cache; pass checkpoint_path=<file>.",
            "no weights in the cache; pass --checkpoint FILE.",
        ),
        (
            "predict",
            "point HF_HUB_CACHE/cache_dir at a cache that holds it",
            "point HF_HUB_CACHE at a cache that holds it",
        ),
        ("predict", "give cache_dir= a folder", "give HF_HUB_CACHE=DIR a folder"),
        ("predict", "top_k=0 and batch_size=0 are invalid", "--top-k 0 and --batch-size 0 are invalid"),
        (
            "train",
            "give either pretrained=True or checkpoint=..., not both",
            "give either --pretrained or --checkpoint FILE, not both",
        ),
        ("train", "output_dir=runs/x exists", "--output runs/x exists"),
        # code keeps Python's words; keywords without an option of this command stay; paths and URLs are left alone
        (
            "predict",
            "use create_model(<variant>, checkpoint_path=...) instead",
            "use create_model(<variant>, checkpoint_path=...) instead",
        ),
        ("predict", "run `sadcl.predict(m, x, top_k=3)`", "run `sadcl.predict(m, x, top_k=3)`"),
        ("predict", "pass strict=False", "pass strict=False"),
        (
            "convert",
            "load it with torch.load(path, weights_only=False)",
            "load it with torch.load(path, weights_only=False)",
        ),
        ("predict", "cannot load image /data/top_k=3/x.png", "cannot load image /data/top_k=3/x.png"),
        ("push", "see https://hub/api?revision=main", "see https://hub/api?revision=main"),
    ],
)
def test_library_keywords_read_as_cli_options(command, message, expected):
    assert _cli_words(message, build_parser().commands[command]) == expected


def test_convert_mismatch_speaks_cli_words(tmp_path, capsys):
    """A real library error: an architecture mismatch in `sadcl convert` says --non-strict, not strict=False."""
    src = tmp_path / "q2l.pth"
    torch.save({"state_dict": {"module.fc.W": torch.zeros(1, 3, 8), "module.foo.weight": torch.zeros(2)}}, src)
    before = snapshot(tmp_path)
    assert main(["convert", str(src), str(tmp_path / "out.safetensors"), "--variant", "sadcl_tiny"]) == 2
    line = one_error_line(capsys.readouterr().err, "convert")
    assert "strict=False" not in line and "--non-strict" in line
    assert snapshot(tmp_path) == before


# -- 3. predict --skip-bad ---------------------------------------------------------------------------------------
def test_predict_stops_at_the_first_bad_image_naming_it(tiny, images, tmp_path, capsys):
    _, ckpt = tiny
    before = snapshot(tmp_path)
    assert main(["predict", "--checkpoint", str(ckpt), str(images)]) == 2
    captured = capsys.readouterr()
    one_error_line(captured.err, "predict", "b_corrupt.png")
    assert captured.out == "" and snapshot(tmp_path) == before


def test_predict_skip_bad_keeps_going_and_exits_1(tiny, images, tmp_path, capsys):
    model, ckpt = tiny
    os.mkfifo(images / "fifo.png")  # never listed: opening it would block forever
    before = snapshot(tmp_path)
    assert main(["predict", "--checkpoint", str(ckpt), "--top-k", "2", "--skip-bad", str(images)]) == 1
    captured = capsys.readouterr()
    out, err = captured.out.splitlines(), captured.err.splitlines()
    assert [line.split(": ")[0] for line in out] == [str(images / "a.png"), str(images / "c.png")]
    assert len(err) == 2 and "Traceback" not in captured.err
    assert err[0].startswith("sadcl predict: skipped: ") and "b_corrupt.png" in err[0]
    assert err[1].startswith("sadcl predict: skipped: ") and "d_truncated.jpg" in err[1]
    assert snapshot(tmp_path) == before

    assert main(["predict", "--checkpoint", str(ckpt), "--skip-bad", "--json", str(images)]) == 1
    res = json.loads(capsys.readouterr().out)
    assert res[str(images / "b_corrupt.png")] is None and res[str(images / "d_truncated.jpg")] is None
    expected = sadcl.predict(model, images / "a.png")[0]
    assert res[str(images / "a.png")] == pytest.approx(expected, abs=1e-5)


def test_predict_skip_bad_with_nothing_bad_exits_0(tiny, images, capsys):
    _, ckpt = tiny
    assert main(["predict", "--checkpoint", str(ckpt), "--skip-bad", str(images / "a.png")]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 1 and captured.err == ""


def test_library_predict_skip_bad_returns_none_entries(tiny, images):
    model, _ = tiny
    paths = [images / "a.png", images / "b_corrupt.png", images / "c.png"]
    with pytest.raises(ImageLoadError, match="b_corrupt.png"):
        sadcl.predict(model, paths)
    with pytest.warns(ImageSkippedWarning, match="b_corrupt.png"):
        results = sadcl.predict(model, paths, skip_bad=True, batch_size=2)
    assert results[1] is None and len(results) == 3
    assert results[2] == pytest.approx(sadcl.predict(model, paths[2])[0], abs=1e-5)


def test_folder_listing_leaves_out_special_files(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    assert list(iter_images([str(tmp_path)])) == [str(tmp_path / "a.png")]


# -- 4. NaN never reaches JSON; options checked at the door -------------------------------------------------------
@pytest.fixture
def nan_for_first_image(nan_logits):
    """Every batch's first row of logits is NaN."""
    nan_logits(0)


def test_predict_json_prints_null_for_nan_and_warns(tiny, images, tmp_path, capsys, nan_for_first_image):
    _, ckpt = tiny
    good = [str(images / "a.png"), str(images / "c.png")]
    before = snapshot(tmp_path)
    assert main(["predict", "--checkpoint", str(ckpt), "--json", *good]) == 1
    captured = capsys.readouterr()

    def no_constants(name):
        raise AssertionError(f"{name} in JSON output")

    res = json.loads(captured.out, parse_constant=no_constants)
    assert set(res[good[0]].values()) == {None}
    assert all(isinstance(v, float) for v in res[good[1]].values())
    err = captured.err.splitlines()
    assert len(err) == 1 and err[0].startswith("sadcl predict: warning: NaN scores for 1 of 2 images")
    assert good[0] in err[0] and good[1] not in err[0]
    assert snapshot(tmp_path) == before


def test_library_predict_sorts_nan_last_and_warns(tiny, images, nan_logits):
    model, _ = tiny
    nan_logits((slice(None), slice(None, None, 2)))  # every other label of every image
    with pytest.warns(NonFiniteScoreWarning, match="a.png"):
        res = sadcl.predict(model, images / "a.png")[0]
    scores = list(res.values())
    finite = [s for s in scores if not math.isnan(s)]
    assert scores[: len(finite)] == sorted(finite, reverse=True) and all(math.isnan(s) for s in scores[len(finite) :])


@pytest.mark.parametrize(
    "option,value",
    [
        ("--threshold", "nan"),
        ("--threshold", "inf"),
        ("--threshold", "-0.1"),
        ("--threshold", "1.5"),
        ("--threshold", "high"),
        ("--top-k", "0"),
        ("--top-k", "-2"),
        ("--top-k", "2.5"),
        ("--batch-size", "0"),
    ],
)
def test_predict_options_are_checked_at_the_door(tmp_path, capsys, option, value):
    before = snapshot(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", option, value, str(tmp_path / "x.png")])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    one_error_line(captured.err, "predict", f"argument {option}:", repr(value), "sadcl predict --help")
    assert captured.out == "" and snapshot(tmp_path) == before


def test_argparse_errors_are_one_line(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--batch-size"])
    one_error_line(capsys.readouterr().err, "predict", "argument --batch-size: expected one argument")
    with pytest.raises(SystemExit):
        main(["predict", "x.png", "--bogus"])  # the command's words, not the top-level parser's
    one_error_line(capsys.readouterr().err, "predict", "unrecognized arguments: --bogus", "(see sadcl predict --help)")
    with pytest.raises(SystemExit):
        main(["no-such-command"])
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("sadcl: error: ")


# -- 5. label names printed safely ----------------------------------------------------------------------------------
HOSTILE = [
    "ok",
    "esc\x1b[31mred\x1b[0m",
    "new\nline",
    "tab\tbed",
    "c1\x9b2J",
    "bidi\u202eevil",
    "nul\x00",
    "zw\u200bsp",
    "ls\u2028ps",
    "caf\u00e9 \u732b",
    "bell\x07",
]


def test_printable_escapes_every_control_and_keeps_the_rest():
    assert [printable(n) for n in HOSTILE] == [
        "ok",
        "esc\\x1b[31mred\\x1b[0m",
        "new\\nline",
        "tab\\tbed",
        "c1\\x9b2J",
        "bidi\\u202eevil",
        "nul\\x00",
        "zw\\u200bsp",
        "ls\\u2028ps",
        "caf\u00e9 \u732b",
        "bell\\x07",
    ]
    assert printable("surrogate\udc80") == "surrogate\\udc80" and printable(3) == "3"
    assert one_line("a\nb\r\nc") == "a | b | c"


def test_predict_prints_hostile_label_names_escaped_and_json_exact(tmp_path, images, capsys):
    torch.manual_seed(0)
    names = HOSTILE + [f"pad{i}" for i in range(20 - len(HOSTILE))]
    model = sadcl.create_model("sadcl_tiny", label_names=names)
    ckpt = save_model(model, tmp_path / "hostile.safetensors")
    image = str(images / "a.png")
    assert main(["predict", "--checkpoint", str(ckpt), image]) == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 1  # one line per image, whatever the names hold
    assert all(ord(c) >= 32 and not 0x7F <= ord(c) <= 0x9F and c not in "\u202e\u200b\u2028" for c in out.strip())
    assert "esc\\x1b[31mred" in out and "new\\nline" in out and "bidi\\u202eevil" in out
    assert main(["predict", "--checkpoint", str(ckpt), "--json", image]) == 0
    assert set(json.loads(capsys.readouterr().out)[image]) == set(names)  # exact names in JSON


def test_info_of_a_hostile_name_is_escaped(capsys):
    assert main(["info", "sadcl\x1b]0;owned\x07"]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err and len(err.splitlines()) == 1


# -- resolve_labels: linear, names the duplicates ------------------------------------------------------------------
def test_duplicate_labels_are_found_in_linear_time_and_named():
    names = [f"label{i}" for i in range(200_000)] + ["label7", "label9", "label9"]
    start = time.perf_counter()
    with pytest.raises(ValueError, match="duplicated: 'label7', 'label9'$"):
        resolve_labels(None, names)
    assert time.perf_counter() - start < 2.0  # the old count() per name took hours here
    many = [f"x{i % 100}" for i in range(1000)]
    with pytest.raises(ValueError, match=r"'x4' and 95 more$"):
        resolve_labels(None, many)
    with pytest.raises(TypeError, match="not one string"):
        resolve_labels(None, "cat")


# -- 6. the installed entry point ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_installed_sadcl_prints_no_traceback_on_garbage(tmp_path):
    garbage = tmp_path / "x.safetensors"
    garbage.write_bytes(b"\x87.")
    image = tmp_path / "x.png"
    image.write_bytes(b"\x89PNG\r\n")
    before = snapshot(tmp_path)
    out = subprocess.run(
        ["sadcl", "predict", "--checkpoint", str(garbage), "--skip-bad", str(image)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert out.returncode == 2 and out.stdout == ""
    one_error_line(out.stderr, "predict", "x.safetensors")
    assert snapshot(tmp_path) == before


@pytest.mark.slow
def test_installed_sadcl_into_a_closed_pipe_exits_quietly():
    """`sadcl list | head -0`: the reader is gone; exit 141 (SIGPIPE's status) with nothing on stderr."""
    proc = subprocess.Popen(
        ["sadcl", "list"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 141 and err == b""
