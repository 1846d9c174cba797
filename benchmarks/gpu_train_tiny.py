"""Train a tiny SADCL for a few hundred steps with AMP on CUDA; record img/s and peak memory with the device name.

The check of the fine-tuning issue for a GPU session (under 5 minutes): it asserts every logged loss is finite
and writes benchmarks/results/gpu_train_tiny.json. The data are synthetic (random images and labels) so that
the GPU machine needs no dataset.

    python benchmarks/gpu_train_tiny.py [--steps 300] [--device cuda] [--amp bf16|fp16] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset

import sadcl
from sadcl.train import TrainConfig, Trainer


class RandomMultiLabel(Dataset):
    """Deterministic random images with 1–3 positive labels each."""

    def __init__(self, n: int, num_classes: int, size: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, size, size, generator=g)
        self.targets = torch.zeros(n, num_classes)
        for i in range(n):
            self.targets[i, torch.randperm(num_classes, generator=g)[: 1 + i % 3]] = 1
        self.label_names = [f"label{i}" for i in range(num_classes)]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.images[i], self.targets[i]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--amp", default="bf16", choices=("bf16", "fp16", "none"))
    ap.add_argument("--out", default="benchmarks/results/gpu_train_tiny.json")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: this check needs a GPU (use --device cpu for a dry run)", file=sys.stderr)
        return 2
    n = args.batch_size * 50
    data = RandomMultiLabel(n, 20, 64)
    epochs = math.ceil(args.steps / (n // args.batch_size))
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(
            model="sadcl_tiny",
            output_dir=tmp,
            objective="sadcl",
            epochs=epochs,
            batch_size=args.batch_size,
            lr=1e-3,
            device=args.device,
            amp=args.amp,
            num_workers=0,
            progress=False,
            patience=None,
            log_interval=25,
            augment="none",
        )
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        summary = Trainer(cfg, train_dataset=data).fit()
        seconds = time.perf_counter() - start
        log = [json.loads(line) for line in (Path(tmp) / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if r.get("event") == "step"]
    assert losses and all(math.isfinite(v) for v in losses), f"non-finite loss in {losses}"
    rates = [r["img_per_s"] for r in log if r.get("event") == "step"][1:]  # the first includes warm-up
    result = dict(
        benchmark="gpu_train_tiny",
        device=torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        amp=args.amp,
        steps=summary["epochs_completed"] * (n // args.batch_size),
        batch_size=args.batch_size,
        img_per_s_median=sorted(rates)[len(rates) // 2] if rates else None,
        seconds=round(seconds, 1),
        peak_memory_mb=round(torch.cuda.max_memory_allocated() / 2**20, 1) if args.device.startswith("cuda") else None,
        losses_finite=True,
        first_loss=losses[0],
        last_loss=losses[-1],
        torch=torch.__version__,
        sadcl=sadcl.__version__,
    )
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_suffix(".tmp")
    tmp_path.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp_path, path)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
