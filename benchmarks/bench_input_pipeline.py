"""Training input pipeline per CPU core on COCO-sized JPEGs: images/s per worker and cores to feed a GPU.

    python benchmarks/bench_input_pipeline.py [--images 128] [--rounds 5] [--out benchmarks/results/input_pipeline.json]
    python benchmarks/bench_input_pipeline.py --quick      # a few seconds: checks that the script works

Images: ``--images`` JPEGs (quality 90) of COCO's usual sizes, 640x480, 480x640 and one in five 500x375,
with photo-like content so that decoding costs what it costs on real data: a colour gradient, luminance
texture at three scales, sensor noise and 4-9 upscaled, tinted Fashion-MNIST items
(``/usr/share/datasets/fashion-mnist``; plain ellipses when it is missing), labelled with the items' classes
in a ``labels.csv`` (sadcl's CSV layout). Mean file size is recorded against COCO train2014's (13.5 GB /
82,783 images = 163 KB).

What is timed, in one process with one thread (``torch.set_num_threads(1)``, ``OMP_NUM_THREADS=1``), i.e. one
DataLoader worker on one core: the training dataset exactly as ``sadcl train`` builds it (``build_dataset``
of a ``DataSpec``, its ``__getitem__``: file open + decode (``load_image``) + augmentation + ``ToTensor`` +
``Normalize``), for the transforms of ``sadcl_coco_448``'s preprocessing at 448 px:

* ``baseline``: the Query2Label recipe, Resize 448 -> Cutout -> RandAugment;
* ``sadcl``: the SADCL recipe, Resize 512 -> MultiScaleCrop 448 -> flip;
* ``eval``: the evaluation transform (squash Resize 448).

Each also runs with torchvision's own ``ToTensor`` + ``Normalize`` in place of sadcl's (``*_torchvision_tail``,
the pipeline before the speed-up; outputs checked identical first, same seeds). Timed calls are chunks of
``--batch`` images; chunk by chunk, ``--rounds`` rounds in which the six contenders alternate in rotating order
(``_common.alternate``), the RNGs reseeded per call so that every round does the same work. Both CPU time
(``time.process_time``: what the pass costs one core, little affected by other jobs taking turns on the
machine) and wall time are recorded. Per-core rate = images / CPU seconds of a pass, *best* (the sum over
chunks of each chunk's fastest round: the undisturbed rate, used for the cores needed) and *median*; the
speed-up is the median of paired before/after ratios. Then: a per-stage breakdown in CPU time (read +
decode, each augmentation op, tensor conversion; medians over rounds; Pillow's bare decode and torchvision's
tail for comparison); a DataLoader as the trainer builds it (``ShardedBatchSampler``, batch 32) with 1 and 2
workers (steady-state epochs of persistent workers: wall images/s, and images per CPU second of the workers,
collation and hand-over included; the first epoch, with worker start-up, apart) and ``default_collate`` of
one batch alone. Cores needed to feed ``--targets`` (default 550 and 700 images/s, our H100 training step
eager and compiled, README) = ceil(target / per-core rate), from the bare pipeline and from the worker's CPU
time; the training process itself needs a core more. On a machine shared with other jobs even CPU time is
inflated (caches, a hyperthread sibling): rerun there when it is quiet.

GPU: with ``--image-dir DIR`` the JPEGs and ``labels.csv`` are written to a new folder and kept, so that
``sadcl train --data DIR/labels.csv --model sadcl_coco_448 --batch-size 32 --num-workers K`` on a GPU machine
can be timed (images/s in its log) against ``bench_train_gpu.py``'s synthetic step (images already on the
device), raising K until it reaches 90 % of it.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported: one core per worker

import csv  # noqa: E402
import math  # noqa: E402
import multiprocessing as mp  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import _common  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, default_collate  # noqa: E402
from torchvision import transforms as T  # noqa: E402

from sadcl.data.images import load_image  # noqa: E402
from sadcl.data.preprocessing import create_transform  # noqa: E402
from sadcl.train.data import DataSpec, build_dataset  # noqa: E402
from sadcl.train.distributed import ShardedBatchSampler  # noqa: E402
from sadcl.zoo.variants import pretrained_cfg_for  # noqa: E402

MODEL = "sadcl_coco_448"
SIZES = ((640, 480), (480, 640), (640, 480), (480, 640), (500, 375))  # one in five 500x375
QUICK_SIZES = ((160, 120), (120, 160))
COCO_MEAN_FILE_KB = 13.5e9 / 82783 / 1e3  # train2014.zip / images
PREVIOUS = {
    "recipe": "sadcl",
    "images_per_s_per_core": 210,
    "source": "issue 13 (last session): SADCL recipe at 448 px on synthetic 640x480 JPEGs",
}
PIPELINES = ("baseline", "sadcl", "eval")
TENSOR_STAGES = ("ToTensor", "Normalize")  # every other op of a pipeline is augmentation (or the eval resize)


# ----------------------------------------------------------------------------- images
def _objects(quick: bool) -> tuple[np.ndarray, list[str], str]:
    """Object masks (uint8 [N, 28, 28]) and their class names: Fashion-MNIST items, or ellipses without it."""
    from sadcl.data.mosaic import FASHION_LABELS, load_fashion_mnist

    try:
        items, labels = load_fashion_mnist("test" if quick else "train")  # test: the smaller file, read faster
        return items, [FASHION_LABELS[i] for i in labels], "Fashion-MNIST items"
    except (OSError, ValueError):
        yy, xx = np.mgrid[-1:1:28j, -1:1:28j]
        rng = np.random.default_rng(0)
        masks = [((xx / a) ** 2 + (yy / b) ** 2 <= 1).astype(np.uint8) * 255 for a, b in rng.uniform(0.4, 1, (64, 2))]
        return np.stack(masks), ["ellipse"] * len(masks), "ellipses (Fashion-MNIST not found)"


def _texture(rng: np.random.Generator, w: int, h: int, cell: int) -> np.ndarray:
    """Smooth random texture of feature size ``cell`` px, mostly luminance (JPEG keeps luminance detail)."""
    gw, gh = w // cell + 2, h // cell + 2
    small = rng.normal(0, 1, (gh, gw, 1)) + 0.25 * rng.normal(0, 1, (gh, gw, 3))
    img = Image.fromarray(np.clip(small * 40 + 128, 0, 255).astype(np.uint8))
    up = np.asarray(img.resize((gw * cell, gh * cell), Image.Resampling.BICUBIC), np.float32)[:h, :w]
    return (up - 128.0) / 40.0


def photo_like(
    rng: np.random.Generator, w: int, h: int, items: np.ndarray, names: list[str]
) -> tuple[Image.Image, set]:
    """One w x h RGB image (gradient + texture + noise + 4-9 tinted objects) and the set of its objects' labels."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    t = xx * np.cos(angle) + yy * np.sin(angle)
    t = ((t - t.min()) / (np.ptp(t) + 1e-6))[..., None]
    img = rng.uniform(30, 220, 3) * (1 - t) + rng.uniform(30, 220, 3) * t
    for cell, amplitude in ((32, 67.0), (8, 45.0), (2, 27.0)):  # tuned: ~150 KB at quality 90, near COCO's mean
        img += amplitude * _texture(rng, w, h, cell)
    labels = set()
    for _ in range(rng.integers(4, 10)):
        k = int(rng.integers(len(items)))
        side = int(rng.uniform(0.2, 0.6) * min(w, h))
        item = Image.fromarray(items[k]).resize((side, side), Image.Resampling.BICUBIC)
        mask = np.asarray(item, np.float32)[..., None] / 255.0
        x0, y0 = int(rng.integers(0, w - side)), int(rng.integers(0, h - side))
        patch = img[y0 : y0 + side, x0 : x0 + side]
        patch[:] = patch * (1 - mask) + rng.uniform(0, 255, 3) * (0.6 + 0.4 * mask) * mask
        labels.add(names[k])
    img += rng.normal(0, 10, (h, w, 1)) + rng.normal(0, 3.3, (h, w, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)), labels


def write_images(folder: Path, n: int, quick: bool, seed: int = 0) -> dict[str, Any]:
    """``n`` JPEGs and ``labels.csv`` in ``folder``; their sizes and file sizes."""
    items, names, kind = _objects(quick)
    rng = np.random.default_rng(seed)
    sizes = QUICK_SIZES if quick else SIZES
    rows, file_bytes = [], []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        img, labels = photo_like(rng, w, h, items, names)
        name = f"{i:05d}.jpg"
        img.save(folder / name, "JPEG", quality=90)
        file_bytes.append((folder / name).stat().st_size)
        rows.append((name, "|".join(sorted(labels))))
    with open(folder / "labels.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("image", "labels"), *rows])
    return {
        "n": n,
        "sizes": dict(Counter("x".join(map(str, sizes[i % len(sizes)])) for i in range(n))),
        "jpeg_quality": 90,
        "objects": kind,
        "mean_file_kb": statistics.mean(file_bytes) / 1e3,
        "min_file_kb": min(file_bytes) / 1e3,
        "max_file_kb": max(file_bytes) / 1e3,
        "coco_train2014_mean_file_kb": COCO_MEAN_FILE_KB,
    }


# ----------------------------------------------------------------------------- pipelines
def transforms(img_size: int) -> dict[str, T.Compose]:
    """The three pipelines of ``MODEL``'s preprocessing at ``img_size``, and each with torchvision's tail."""
    cfg = {**pretrained_cfg_for(MODEL), "input_size": (3, img_size, img_size)}
    out = {
        "baseline": create_transform(cfg, training=True, recipe="baseline"),
        "sadcl": create_transform(cfg, training=True, recipe="sadcl"),
        "eval": create_transform(cfg),
    }
    norm = out["eval"].transforms[-1]
    for name in PIPELINES:
        ops = out[name].transforms[:-2]
        out[f"{name}_torchvision_tail"] = T.Compose([*ops, T.ToTensor(), T.Normalize(norm.mean, norm.std)])
    return out


def _reseed(seed: int = 0) -> None:
    """Seed the two RNGs the augmentations draw from (Python's for the ops, torch's for the flip)."""
    random.seed(seed)
    torch.manual_seed(seed)


def one_pass(dataset: Any, indices: range, seed: int, cpu: list[float]) -> Callable[[], None]:
    """``dataset[i]`` for ``i`` in ``indices``, the RNGs seeded with ``seed`` first (the same work on every call);
    its CPU seconds are appended to ``cpu`` (the caller measures the wall time)."""

    def run() -> None:
        _reseed(seed)
        c0 = time.process_time()
        for i in indices:
            dataset[i]
        cpu.append(time.process_time() - c0)

    return run


def timed_chunks(datasets: dict[str, Any], chunk: int, rounds: int) -> dict[str, dict[str, list[list[float]]]]:
    """Per contender, ``rounds`` wall and CPU times of each chunk of ``chunk`` images. Chunk by chunk the
    contenders alternate (``_common.alternate``), so both sides of a comparison run on the same images with the
    same random draws, next to each other in time: short rounds, so that a busy phase of the machine hits
    both."""
    n = len(next(iter(datasets.values())))
    out: dict[str, dict[str, list[list[float]]]] = {k: {"wall": [], "cpu": []} for k in datasets}
    for c, start in enumerate(range(0, n, chunk)):
        indices = range(start, min(start + chunk, n))
        cpu: dict[str, list[float]] = {k: [] for k in datasets}
        warmup = 1 if c == 0 else 0
        fns = {k: one_pass(ds, indices, c, cpu[k]) for k, ds in datasets.items()}
        wall = _common.alternate(fns, rounds=rounds, warmup=warmup)
        for k in datasets:
            out[k]["wall"].append(wall[k])
            out[k]["cpu"].append(cpu[k][warmup:])
    return out


def pass_rates(n: int, times: dict[str, list[list[float]]]) -> dict[str, Any]:
    """Images/s of a pass over the ``n`` images, from CPU and wall time: *best* adds up each chunk's fastest
    round (the undisturbed rate), *median* each chunk's median."""
    out: dict[str, Any] = {}
    for clock in ("cpu", "wall"):
        chunks = times[clock]
        out[f"images_per_s_{clock}_best"] = n / sum(min(v) for v in chunks)
        out[f"images_per_s_{clock}_median"] = n / sum(statistics.median(v) for v in chunks)
        out[f"{clock}_s_per_chunk"] = [[round(t, 6) for t in v] for v in chunks]
    return out


def paired_speedup(before: dict[str, list[list[float]]], after: dict[str, list[list[float]]], clock: str) -> float:
    """Median over (chunk, round) of before/after time: each ratio compares two neighbouring runs."""
    return statistics.median(b / a for bs, afters in zip(before[clock], after[clock]) for b, a in zip(bs, afters))


def rates(n: int, wall: list[float], cpu: list[float] | None) -> dict[str, Any]:
    """Images/s of ``n`` images per timed call: from CPU time and wall time, best round and median."""
    out: dict[str, Any] = {"wall": _common.summary(wall), "images_per_s_wall_best": n / min(wall)}
    out["images_per_s_wall_median"] = n / statistics.median(wall)
    if cpu:
        out["cpu"] = _common.summary(cpu)
        out["images_per_s_cpu_best"] = n / min(cpu)
        out["images_per_s_cpu_median"] = n / statistics.median(cpu)
    return out


def check_identical(datasets: dict[str, Any]) -> None:
    """Each pipeline gives the same tensors with sadcl's tail as with torchvision's (same seeds)."""
    for name in PIPELINES:
        _reseed()
        ours = [datasets[name][i][0] for i in range(len(datasets[name]))]
        _reseed()
        ref = [datasets[f"{name}_torchvision_tail"][i][0] for i in range(len(ours))]
        if not all(torch.equal(a, b) for a, b in zip(ours, ref)):
            raise SystemExit(f"bench_input_pipeline: the {name} pipeline differs from torchvision's ToTensor+Normalize")


def breakdown(dataset: Any, tf: T.Compose, rounds: int) -> dict[str, Any]:
    """Median CPU ms per image of each stage of ``dataset[i]`` with ``tf``: read + decode (``load_image``), each
    op; also Pillow's bare decode and torchvision's tail on the same augmented images."""
    tv_tail = T.Compose([T.ToTensor(), T.Normalize(tf.transforms[-1].mean, tf.transforms[-1].std)])
    names = ["read_decode"] + [type(op).__name__ for op in tf.transforms] + ["pillow_decode_only", "torchvision_tail"]
    per_round: dict[str, list[float]] = {k: [] for k in names}
    for _ in range(rounds):
        _reseed()
        acc = dict.fromkeys(names, 0.0)
        for path in dataset.paths:
            t0 = time.process_time()
            with Image.open(path) as im:
                im.load()
            t1 = time.process_time()
            x = load_image(path)
            acc["pillow_decode_only"] += t1 - t0
            acc["read_decode"] += time.process_time() - t1
            for op in tf.transforms:
                if type(op).__name__ == "ToTensor":
                    t0 = time.process_time()
                    tv_tail(x)
                    acc["torchvision_tail"] += time.process_time() - t0
                t0 = time.process_time()
                x = op(x)
                acc[type(op).__name__] += time.process_time() - t0
        for k in names:
            per_round[k].append(1e3 * acc[k] / len(dataset.paths))
    ms = {k: statistics.median(v) for k, v in per_round.items()}
    kinds = {"decode": ms["read_decode"], "augment": 0.0, "to_tensor_normalize": 0.0}
    for op in tf.transforms:
        name = type(op).__name__
        kinds["to_tensor_normalize" if name in TENSOR_STAGES else "augment"] += ms[name]
    total = sum(kinds.values())
    return {
        "ms_per_image": ms,
        "by_kind_ms": kinds,
        "by_kind_share": {k: v / total for k, v in kinds.items()},
        "total_ms": total,
        "note": "CPU ms per image, medians over rounds; pillow_decode_only and torchvision_tail are not in total_ms",
    }


def _cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc``; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _workers_cpu_s(pids: list[int]) -> float | None:
    times = [_cpu_s(pid) for pid in pids]
    return None if not pids or None in times else sum(times)


def loader_rates(dataset: Any, batch: int, workers: tuple[int, ...], epochs: int) -> dict[str, Any]:
    """A DataLoader as the trainer builds it, per worker count: images/s of steady epochs of persistent
    workers (wall), and images per CPU second of the workers (their whole work: sampling, the pipeline,
    collating into shared memory) and of this process (receiving the batches)."""
    out: dict[str, Any] = {}
    for k in workers:
        sampler = ShardedBatchSampler(len(dataset), batch, seed=0)
        loader = DataLoader(dataset, batch_sampler=sampler, num_workers=k, persistent_workers=True)
        before = {c.pid for c in mp.active_children()}
        wall, cpu, main_cpu, pids = [], [], [], []
        for e in range(epochs + 1):
            sampler.set_epoch(e)
            c0, m0, t0 = _workers_cpu_s(pids), time.process_time(), time.perf_counter()
            n = sum(x.shape[0] for x, _ in loader)
            wall.append(time.perf_counter() - t0)
            main_cpu.append(time.process_time() - m0)
            c1 = _workers_cpu_s(pids)
            if e == 0:  # the workers exist from the first epoch on
                pids = sorted({c.pid for c in mp.active_children()} - before)
            elif c0 is not None and c1 is not None:
                cpu.append(c1 - c0)
        del loader  # stops the workers
        out[f"workers_{k}"] = {
            "num_workers": k,
            "images_per_epoch": n,
            "first_epoch_s": wall[0],
            **rates(n, wall[1:], None),
            "workers_cpu": _common.summary(cpu) if cpu else None,
            "images_per_worker_cpu_s_best": n / min(cpu) if cpu and min(cpu) > 0 else None,
            "main_process_cpu_ms_per_image": 1e3 * statistics.median(main_cpu[1:]) / n,
        }
    return out


def collate_ms(dataset: Any, batch: int, rounds: int) -> dict[str, Any]:
    """``default_collate`` of one batch of ``dataset`` samples, in this process (workers collate into shared memory)."""
    samples = [dataset[i % len(dataset)] for i in range(batch)]
    times = _common.alternate({"collate": lambda: default_collate(samples)}, rounds=rounds)["collate"]
    return {"batch": batch, "time": _common.summary(times), "ms_per_image": 1e3 * statistics.median(times) / batch}


def cores_needed(rate: float, targets: list[int]) -> dict[str, int]:
    return {str(t): math.ceil(t / rate) for t in targets}


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict:
    p = _common.parser(__doc__.splitlines()[0], "input_pipeline.json")
    p.add_argument("--images", type=int, default=None, help="JPEGs to generate (default 128; --quick 4)")
    p.add_argument("--img-size", type=int, default=None, help="training resolution (default 448; --quick 64)")
    p.add_argument("--batch", type=int, default=None, help="DataLoader batch (default 32; --quick 2)")
    p.add_argument("--targets", type=int, nargs="+", default=[550, 700], help="images/s to feed (default 550 700)")
    p.add_argument("--image-dir", type=Path, default=None, help="write the JPEGs to this new folder and keep them")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads or 1)  # one core: the rate of one DataLoader worker
    n = args.images or (4 if args.quick else 128)
    size = args.img_size or (64 if args.quick else 448)
    batch = args.batch or (2 if args.quick else 32)
    rounds = args.rounds or (2 if args.quick else 5)
    if n < 2 * batch:
        raise SystemExit(f"bench_input_pipeline: --images ({n}) must be at least two batches (--batch {batch})")
    if args.image_dir is not None and args.image_dir.exists():
        raise SystemExit(f"bench_input_pipeline: --image-dir {args.image_dir} exists; name a new folder")
    t_start = time.perf_counter()
    report = _common.result_header(
        "bench_input_pipeline.py", args, argv, model=MODEL, img_size=size, batch=batch, previous_estimate=PREVIOUS
    )
    with tempfile.TemporaryDirectory(prefix="sadcl-bench-jpeg-") as tmp:
        folder = Path(tmp) if args.image_dir is None else args.image_dir
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        report["images"] = write_images(folder, n, args.quick)
        report["images"]["generation_s"] = time.perf_counter() - t0
        spec = DataSpec(path=str(folder / "labels.csv"), format="csv")
        datasets = {name: build_dataset(spec, tf) for name, tf in transforms(size).items()}
        check_identical(datasets)
        report["identical_to_torchvision_tail"] = True

        times = timed_chunks(datasets, batch, rounds)
        pipes: dict[str, Any] = {}
        for name in PIPELINES:
            after, before = times[name], times[f"{name}_torchvision_tail"]
            rate = pass_rates(n, after)
            headline = rate["images_per_s_cpu_best"]
            pipes[name] = {
                "transforms": repr(datasets[name].transform),
                "images_per_s_per_core": headline,
                "cores_needed": cores_needed(headline, args.targets),
                "cores_needed_wall_median": cores_needed(rate["images_per_s_wall_median"], args.targets),
                "after": rate,
                "before": pass_rates(n, before),
                "speedup_cpu": paired_speedup(before, after, "cpu"),
                "speedup_wall": paired_speedup(before, after, "wall"),
                "breakdown": breakdown(datasets[name], datasets[name].transform, (rounds + 1) // 2),
            }
        report["pipelines"] = pipes

        loaders = {}
        for name in ("sadcl", "baseline"):
            ld = loader_rates(datasets[name], batch, (1, 2), epochs=(rounds + 1) // 2)
            per_cpu_s = ld["workers_1"]["images_per_worker_cpu_s_best"]
            if per_cpu_s:
                ld["cores_needed_from_worker_cpu"] = cores_needed(per_cpu_s, args.targets)
                ld["loader_overhead_cpu_ms_per_image"] = 1e3 / per_cpu_s - 1e3 / pipes[name]["images_per_s_per_core"]
            loaders[name] = ld
        report["dataloader"] = loaders
        report["collate"] = collate_ms(datasets["sadcl"], batch, rounds)
    if args.image_dir is not None:
        report["image_dir"] = str(args.image_dir)
    report["load_average_1m_at_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    report["wall_s"] = time.perf_counter() - t_start
    _common.write_json(args.out, report)

    rows = []
    for name, pipe in pipes.items():
        b = pipe["breakdown"]["by_kind_ms"]
        rows.append(
            {
                "pipeline": name,
                "img/s/core": pipe["images_per_s_per_core"],
                "wall median": pipe["after"]["images_per_s_wall_median"],
                "before": pipe["before"]["images_per_s_cpu_best"],
                "speedup": pipe["speedup_cpu"],
                "decode ms": b["decode"],
                "augment ms": b["augment"],
                "tensor ms": b["to_tensor_normalize"],
                **{f"cores {t}": c for t, c in pipe["cores_needed"].items()},
            }
        )
    _common.print_table(rows, list(rows[0]))
    for name, ld in loaders.items():
        w1, w2 = ld["workers_1"], ld["workers_2"]
        print(
            f"DataLoader {name}, batch {batch}: 1 worker {w1['images_per_s_wall_best']:.0f} img/s wall "
            f"({w1['images_per_worker_cpu_s_best'] or float('nan'):.0f} per worker CPU second), "
            f"2 workers {w2['images_per_s_wall_best']:.0f} img/s wall (best epochs)"
        )
    print(
        f"images: mean {report['images']['mean_file_kb']:.0f} KB (COCO {COCO_MEAN_FILE_KB:.0f} KB); "
        f"collate {report['collate']['ms_per_image']:.2f} ms/image; wall {report['wall_s']:.0f} s  results: {args.out}"
    )
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
