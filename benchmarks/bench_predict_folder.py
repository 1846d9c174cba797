"""End to end from image files against the model alone on preprocessed tensors: ``sadcl predict`` on a folder.

    python benchmarks/bench_predict_folder.py [--images 2000] [--coco-images 16] [--workers 0]
        [--sides 56-400,56-84] [--rss 1000,20000] [--no-cli] [--out benchmarks/results/predict_folder.json]
    python benchmarks/bench_predict_folder.py --quick      # seconds: checks that the script works

Folders: Fashion-MNIST test mosaics (``/usr/share/datasets/fashion-mnist``), each squash-resized (bicubic) to
a width and a height drawn independently from a side range of ``--sides`` and saved as RGB, alternately PNG
and JPEG (quality 90): real files of mixed sizes and formats. The first range (56-400 px) is the headline
folder: both models, the CLI and the memory run use it. The default model is also timed on the others
(56-84 px: about its own 56 px, where decoding costs least), because on a machine whose cores all run the
model, decoding a 400 px file costs about as much CPU as scoring it.

Per model, timed in alternating rounds (``_common.alternate``) in this process, same batch size and threads:

* ``tensor``: ``iter_predict`` over the float tensor of the same images, preprocessed beforehand: the
  model-only rate (forward, sigmoid, ranked label dicts);
* ``files_default`` and ``files_w{N}``: ``iter_predict`` over the file paths with ``workers=None`` (the
  default policy, :func:`sadcl.data.stream.decoded_batches`: on a CPU whose cores all run the model, decoding
  in place until it costs more than the model) and with each ``--workers N``: open, decode, resize, uint8
  batches, normalisation, forward, ranking; worker start-up included;
* ``files_decoded``: the ``files_default`` path with each image's decoding replaced by a lookup of its decoded
  pixels (in place): everything the files path does besides decoding, so ``tensor`` / ``files_decoded`` says
  how much of the gap is not decoding.

Ratio = ``tensor`` time / ``files`` time, per round, median over rounds (end-to-end rate as a share of the
model-only rate). Targets (issue 13): ``files_default`` >= 0.90 for the default model
(``sadcl_fashion_mosaic``, packaged weights) and >= 0.95 for ``sadcl_coco_448`` (random weights; few images,
a forward takes seconds on a CPU). ``decode_cpu_ms_per_image`` (decode + resize alone, one process) against
``model_cpu_ms_per_image`` (the ``tensor`` run's CPU time, all threads) gives what even a perfect overlap on
cores that all run the model could reach: ``overlap_bound_ratio = model / (model + decode)``.

``cli``: the installed ``sadcl predict --output X.jsonl`` as whole processes on the folder and on one image
of it; start-up = the one-image run, rate = (N - 1) / (t_N - t_1). ``rss``: in a fresh process, ``iter_predict``
over a generator of paths (the folder, cycled) whose consumer writes one JSON line per image to a file;
the main process's peak RSS (``VmHWM``) after the first and after the last count of ``--rss``, and the largest
peak of any decoding worker. Target: growth < 50 MB between 1,000 and 20,000 images.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from itertools import cycle, islice
from pathlib import Path
from typing import Any

import _common
import numpy as np
import torch
from PIL import Image

import sadcl
from sadcl.data.mosaic import make_mosaics, mosaic_to_pil
from sadcl.data.stream import decode, decoded_batches, default_workers, normalise
from sadcl.inference import iter_predict

TARGETS = {"sadcl_fashion_mosaic": 0.90, "sadcl_coco_448": 0.95}
RSS_GROWTH_MAX_MB = 50.0


def write_folder(root: Path, n: int, min_side: int, max_side: int, seed: int = 0) -> list[Path]:
    """``n`` mosaics of random sizes in ``root``, alternately PNG and JPEG; their paths in order."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, _, _ = make_mosaics("test", n, seed=seed)
    paths = []
    for i, arr in enumerate(images):
        w, h = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
        img = mosaic_to_pil(arr).resize((w, h), Image.Resampling.BICUBIC)
        path = root / f"{i:06d}.{'png' if i % 2 == 0 else 'jpg'}"
        img.save(path, "PNG" if i % 2 == 0 else "JPEG", **({} if i % 2 == 0 else {"quality": 90}))
        paths.append(path)
    return paths


def preprocessed(model: torch.nn.Module, paths: list[Path], batch_size: int, device: str = "cpu") -> torch.Tensor:
    """The model's input for ``paths``, built once on ``device`` (what the ``tensor`` contender starts from)."""
    cfg = model.pretrained_cfg
    mean, std = (torch.tensor(cfg[k], dtype=torch.float32).view(3, 1, 1) for k in ("mean", "std"))
    size = tuple(cfg["input_size"][1:])
    batches = decoded_batches(paths, size, cfg["interpolation"], batch_size=batch_size, workers=0)
    return torch.cat([normalise(b.pixels, mean, std) for b in batches]).contiguous().to(device)


def _consume(model: torch.nn.Module, images: Any, batch_size: int, workers: int | None, device: str = "cpu") -> int:
    n = 0  # each batch's scores are Python floats: on a GPU the loop waits for every batch
    for batch in iter_predict(model, images, batch_size=batch_size, workers=workers, device=device):
        n += len(batch)
    return n


def _without_decoding(model: torch.nn.Module, files: list[str], batch_size: int, pixels: dict, device: str) -> int:
    """``_consume`` in place with ``decode`` replaced by a lookup in ``pixels`` (each file decoded beforehand)."""
    from sadcl.data import stream

    real = stream.decode
    stream.decode = lambda item, size, interpolation="bilinear": pixels[item]
    try:
        return _consume(model, files, batch_size, 0, device)
    finally:
        stream.decode = real


def _score_matrix(model: torch.nn.Module, images: Any, device: str) -> torch.Tensor:
    batches = iter_predict(model, images, device=device)
    return torch.tensor([[p.scores[n] for n in model.label_names] for b in batches for p in b])


def _cpu_seconds(fn: Callable[[], Any]) -> float:
    """CPU time of ``fn`` in this process (all its threads; ``fn`` starts no process)."""
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def time_model(
    name: str,
    paths: list[Path],
    batch_size: int,
    workers: list[int],
    rounds: int,
    pretrained: bool,
    device: str = "cpu",
) -> dict[str, Any]:
    """The contenders of one model on ``paths`` (module docstring), scored on ``device``."""
    torch.manual_seed(0)
    model = sadcl.create_model(name, pretrained=pretrained).eval()
    x = preprocessed(model, paths, batch_size, device)
    files = [str(p) for p in paths]
    fns: dict[str, Callable[[], Any]] = {
        "tensor": lambda: _consume(model, x, batch_size, 0, device),
        "files_default": lambda: _consume(model, files, batch_size, None, device),
    }
    for w in workers:
        fns[f"files_w{w}"] = lambda w=w: _consume(model, files, batch_size, w, device)
    size = model.pretrained_cfg["input_size"][-1]
    decoded = {f: decode(f, (size, size), model.pretrained_cfg["interpolation"]) for f in files}
    fns["files_decoded"] = lambda: _without_decoding(model, files, batch_size, decoded, device)
    # Same scores both ways (the preprocessing is create_transform's; see tests/test_iter_predict.py).
    diff = (_score_matrix(model, files[:batch_size], device) - _score_matrix(model, x[:batch_size], device)).abs().max()
    times = _common.alternate(fns, rounds=rounds, warmup=1)
    decode_cpu = _cpu_seconds(lambda: [decode(p, (size, size), model.pretrained_cfg["interpolation"]) for p in files])
    model_cpu = _cpu_seconds(fns["tensor"])
    n = len(paths)
    out: dict[str, Any] = {
        "model": name,
        "pretrained": pretrained,
        "image_size": size,
        "images": n,
        "batch_size": batch_size,
        "device": device,
        "default_workers": default_workers(torch.device(device).type),
        "files_vs_tensor_max_abs_diff": float(diff),
        "decode_cpu_ms_per_image": decode_cpu / n * 1e3,
        "model_cpu_ms_per_image": model_cpu / n * 1e3,
        "overlap_bound_ratio": model_cpu / (model_cpu + decode_cpu),
        "contenders": {},
    }
    for k, ts in times.items():
        out["contenders"][k] = {"time": _common.summary(ts), "images_per_s": n / statistics.median(ts)}
        if k != "tensor":
            out["contenders"][k]["ratio_to_tensor"] = statistics.median([a / b for a, b in zip(times["tensor"], ts)])
    target = TARGETS.get(name)
    if target is not None:
        ratio = out["contenders"]["files_default"]["ratio_to_tensor"]
        out["target"] = {"ratio_min": target, "met": ratio >= target}
    return out


def time_cli(paths: list[Path], batch_size: int, threads: int, tmp: Path) -> dict[str, Any]:
    """``sadcl predict`` as whole processes on the folder and on one image (start-up)."""
    exe = shutil.which("sadcl")
    base = [exe] if exe else [sys.executable, "-m", "sadcl.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}

    def run(images: list[str], expected: int) -> float:
        out = tmp / "cli.jsonl"
        cmd = [*base, "predict", "--batch-size", str(batch_size), "--no-progress", "--overwrite"]
        cmd += ["--output", str(out), *images]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        elapsed = time.perf_counter() - t0
        lines = out.read_text().count("\n")
        if lines != expected:
            raise RuntimeError(f"sadcl predict wrote {lines} records for {expected} images")
        return elapsed

    n = len(paths)
    one = run([str(paths[0])], 1)
    folder = run([str(paths[0].parent)], n)
    return {
        "command": "sadcl predict --batch-size B --no-progress --overwrite --output X.jsonl FOLDER",
        "images": n,
        "one_image_s": one,
        "folder_s": folder,
        "startup_s": one,
        "images_per_s_after_startup": (n - 1) / max(folder - one, 1e-9),
        "images_per_s_with_startup": n / folder,
    }


# ----------------------------------------------------------------------------- memory (a fresh process)
def _status_kib(pid: int | str, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _children() -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            kids += [int(p) for p in (task / "children").read_text().split()]
        except FileNotFoundError:  # a thread that ended since the listing
            continue
    return kids


def rss_child(folder: str, counts: list[int], batch_size: int, threads: int, out_file: str) -> dict[str, Any]:
    """Stream ``max(counts)`` paths (``folder`` cycled) through ``iter_predict`` to a JSON Lines file; the
    main process's VmHWM (MB) when each count is reached, and the largest worker VmHWM seen."""
    torch.set_num_threads(threads)
    model = sadcl.create_model("sadcl_fashion_mosaic", pretrained=True).eval()
    files = sorted(str(p) for p in Path(folder).iterdir())

    def paths() -> Iterator[str]:
        return islice(cycle(files), max(counts))

    hwm: dict[str, float] = {}
    worker_peak = workers_seen = 0
    done = 0
    with open(out_file, "w", encoding="utf-8") as f:
        for batch in iter_predict(model, paths(), batch_size=batch_size):
            for p in batch:
                f.write(json.dumps({"image": p.image, "scores": p.scores}) + "\n")
            done += len(batch)
            if done % (batch_size * 20) == 0 or any(c <= done < c + batch_size for c in counts):
                kids = _children()
                workers_seen = max(workers_seen, len(kids))
                worker_peak = max([worker_peak, *(_status_kib(k, "VmHWM") or 0 for k in kids)])
            for c in counts:
                if c <= done < c + batch_size and str(c) not in hwm:
                    hwm[str(c)] = _status_kib("self", "VmHWM") / 1024
    return {
        "main_vmhwm_mb_at": hwm,
        "workers_seen": workers_seen,  # 0: decoded in place (the default policy on a CPU the model fills)
        "worker_vmhwm_mb_max": worker_peak / 1024,
        "images": done,
    }


def time_rss(folder: Path, counts: list[int], batch_size: int, threads: int, tmp: Path) -> dict[str, Any]:
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import bench_predict_folder as b; "
        "print(json.dumps(b.rss_child(sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), "
        "sys.argv[6])))"
    )
    here = str(Path(__file__).resolve().parent)
    args = [here, str(folder), json.dumps(counts), str(batch_size), str(threads), str(tmp / "rss.jsonl")]
    proc = subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, text=True)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    first, last = str(min(counts)), str(max(counts))
    growth = res["main_vmhwm_mb_at"][last] - res["main_vmhwm_mb_at"][first]
    res.update(
        {
            "counts": counts,
            "growth_mb": growth,
            "target": {"growth_mb_max": RSS_GROWTH_MAX_MB, "met": growth < RSS_GROWTH_MAX_MB},
            "consumer": "iter_predict → one JSON line per image written to a file",
        }
    )
    return res


def _sides(text: str) -> list[tuple[int, int]]:
    """``"56-400,56-84"`` -> ``[(56, 400), (56, 84)]``."""
    out = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        if not (lo.strip().isdigit() and hi.strip().isdigit() and 1 <= int(lo) <= int(hi)):
            raise SystemExit(f"--sides: expected MIN-MAX[,MIN-MAX...] pixel ranges, got {part!r}")
        out.append((int(lo), int(hi)))
    return out


def main(argv: list[str] | None = None) -> dict:
    p = _common.parser(__doc__.splitlines()[0], "predict_folder.json")
    p.add_argument("--images", type=int, default=2000, help="images per folder (default: %(default)s)")
    p.add_argument(
        "--coco-images", type=int, default=16, help="images for sadcl_coco_448, one batch (default: %(default)s)"
    )
    p.add_argument("--batch-size", type=int, default=None, help="default: 16 (4 with --quick)")
    p.add_argument(
        "--sides",
        default="56-400,56-84",
        help="image side ranges, one folder each (default: %(default)s); the first is the headline folder "
        "(both models, CLI, RSS), the others time the default model only",
    )
    p.add_argument("--workers", default="0", help="comma-separated worker counts timed besides the default")
    p.add_argument("--rss", default="1000,20000", help="image counts between which RSS growth is measured")
    p.add_argument("--no-cli", action="store_true", help="skip the whole-process sadcl predict timing")
    args = p.parse_args(argv)
    _common.set_threads(args.threads)
    quick = args.quick
    rounds = args.rounds or (1 if quick else 5)
    n = 24 if quick else args.images
    args.batch_size = args.batch_size or (4 if quick else 16)  # quick: 6 batches, enough to start workers
    sides = _sides(args.sides)[: 1 if quick else None]
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    counts = [24, 72] if quick else sorted(int(c) for c in args.rss.split(","))
    big = ("sadcl_tiny", False) if quick else ("sadcl_coco_448", False)
    coco_n = 8 if quick else args.coco_images
    report = _common.result_header("bench_predict_folder.py", args, argv, images_per_folder=n, folders=[], results=[])
    rows = []
    with tempfile.TemporaryDirectory(prefix="sadcl-bench-") as tmp_name:
        tmp = Path(tmp_name)
        for k, (lo, hi) in enumerate(sides):
            t0 = time.perf_counter()
            paths = write_folder(tmp / f"images_{lo}_{hi}", n, lo, hi)
            folder = {"min_side": lo, "max_side": hi, "formats": "PNG/JPEG alternate, RGB", "images": n}
            folder["write_s"] = time.perf_counter() - t0
            folder["mean_file_kb"] = sum(q.stat().st_size for q in paths) / n / 1024
            report["folders"].append(folder)
            # (model, pretrained weights, its images, rounds): a coco_448 forward takes seconds on a CPU
            models = [("sadcl_fashion_mosaic", True, paths, rounds)]
            if k == 0:
                models.append((*big, paths[:coco_n], max(1, rounds - 3)))  # 2 rounds: ~15 s a call on 2 cores
                headline = paths
            for name, pretrained, ps, r in models:
                res = time_model(name, ps, args.batch_size, workers, r, pretrained)
                res["sides"] = [lo, hi]
                report["results"].append(res)
                for c_name, c in res["contenders"].items():
                    rows.append(
                        {
                            "model": name,
                            "sides": f"{lo}-{hi}",
                            "contender": c_name,
                            "images/s": c["images_per_s"],
                            "ratio": c.get("ratio_to_tensor"),
                        }
                    )
        if not args.no_cli:
            report["cli"] = time_cli(headline, args.batch_size, torch.get_num_threads(), tmp)
        report["rss"] = time_rss(headline[0].parent, counts, args.batch_size, torch.get_num_threads(), tmp)
    _common.write_json(args.out, report)
    _common.print_table(rows, ["model", "sides", "contender", "images/s", "ratio"])
    if "cli" in report:
        c = report["cli"]
        print(f"cli: start-up {c['startup_s']:.2f} s, {c['images_per_s_after_startup']:.0f} images/s after it")
    r = report["rss"]
    print(f"rss: main VmHWM {r['main_vmhwm_mb_at']} MB, growth {r['growth_mb']:.1f} MB  results: {args.out}")
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
