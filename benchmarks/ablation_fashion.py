"""The poster's ablation at small scale, on multi-label Fashion-MNIST mosaics (CPU).

Protocol (the paper's two steps, each row fine-tuned from the same step-1 model of its seed):
  step 1  Query2Label baseline (asymmetric loss, γ−=4) from scratch on N training mosaics;
  step 2  E2 more epochs from the step-1 weights with one of the objectives below
          (the baseline row continues with the asymmetric loss alone, so every row trains equally long):
    baseline        ASL only                          (Query2Label setting)
    +SSCL           ASL + 100·sample-to-sample
    +PSCL           ASL + 50·prototype-to-sample
    SADCL           ASL + 100·SSCL + 50·PSCL           (the paper)
    SADCL-official  as SADCL, with the authors' SSCL (label-mask and shift quirks)
Model selection on validation mosaics built from the *train* split (another seed); metrics on test mosaics built
from the *test* split only. Writes benchmarks/results/ablation_fashion.json and prints a markdown table.

    python benchmarks/ablation_fashion.py [--quick] [--train N] [--seeds 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

import sadcl
from sadcl.data.mosaic import MosaicDataset
from sadcl.data.transforms import eval_transform
from sadcl.train import TrainConfig, Trainer, evaluate_model
from sadcl.zoo.loading import load_pretrained
from sadcl.zoo.safetensors_io import read_safetensors

ROWS = {  # name: (objective, loss weights, official SSCL)
    "baseline": ("asl", (1.0, 0.0, 0.0), False),
    "+SSCL": ("sadcl", (1.0, 100.0, 0.0), False),
    "+PSCL": ("sadcl", (1.0, 0.0, 50.0), False),
    "SADCL": ("sadcl", (1.0, 100.0, 50.0), False),
    "SADCL-official": ("sadcl", (1.0, 100.0, 50.0), True),
}
MULTI_SEED_ROWS = ("baseline", "SADCL")


def _datasets(n_train: int, n_val: int, n_test: int):
    cfg = sadcl.zoo.pretrained_cfg_for("sadcl_fashion_mosaic")
    tf = eval_transform(56, mean=cfg["mean"], std=cfg["std"])
    return (
        MosaicDataset("train", n_train, seed=100, transform=tf),
        MosaicDataset("train", n_val, seed=101, transform=tf),
        MosaicDataset("test", n_test, seed=102, transform=tf),
    )


def _run(cfg: TrainConfig, train, val) -> Path:
    Trainer(cfg, train_dataset=train, val_dataset=val).fit()
    return Path(cfg.output_dir) / "best.safetensors"


def _test(weights: Path, test) -> dict:
    model = sadcl.create_model("sadcl_fashion_mosaic")
    load_pretrained(model, *read_safetensors(weights), source=str(weights))
    r = evaluate_model(model.eval(), test, batch_size=256, num_workers=0, device="cpu", amp="none")
    return {k: float(r[k]) for k in ("mAP", "CF1", "OF1", "mAP_sklearn")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train", type=int, default=2000, help="training mosaics (low-data setting)")
    ap.add_argument("--val", type=int, default=1000)
    ap.add_argument("--test", type=int, default=5000)
    ap.add_argument("--epochs1", type=int, default=12)
    ap.add_argument("--epochs2", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="a tiny smoke run (not a measurement)")
    ap.add_argument("--out", default="benchmarks/results/ablation_fashion.json")
    args = ap.parse_args()
    if args.quick:
        args.train, args.val, args.test, args.epochs1, args.epochs2, args.seeds = 128, 64, 64, 1, 1, 1
    train, val, test = _datasets(args.train, args.val, args.test)
    common = dict(
        model="sadcl_fashion_mosaic",
        batch_size=64,
        weight_decay=1e-4,
        ema_decay=0.99,
        amp="none",
        num_workers=0,
        progress=False,
        patience=None,
        augment="none",
    )
    results: dict[str, list[dict]] = {row: [] for row in ROWS}
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            step1 = _run(
                TrainConfig(
                    output_dir=f"{tmp}/s{seed}/step1",
                    objective="asl",
                    gamma_neg=4.0,
                    lr=2e-3,
                    epochs=args.epochs1,
                    seed=seed,
                    **common,
                ),
                train,
                val,
            )
            for row, (objective, weights, official) in ROWS.items():
                if seed > 0 and row not in MULTI_SEED_ROWS:
                    continue
                t0 = time.time()
                best = _run(
                    TrainConfig(
                        output_dir=f"{tmp}/s{seed}/{row}",
                        objective=objective,
                        gamma_neg=0.0,
                        loss_weights=weights,
                        official_sample_loss=official,
                        lr=2e-4,
                        epochs=args.epochs2,
                        seed=seed,
                        checkpoint=str(step1),
                        **common,
                    ),
                    train,
                    val,
                )
                metrics = dict(_test(best, test), seed=seed, seconds=round(time.time() - t0, 1))
                results[row].append(metrics)
                print(row, metrics, flush=True)
    summary = {}
    for row, runs in results.items():
        summary[row] = {"runs": len(runs)}
        for k in ("mAP", "CF1", "OF1"):
            vals = [r[k] for r in runs]
            summary[row][k] = round(statistics.mean(vals), 2)
            summary[row][k + "_std"] = round(statistics.stdev(vals), 2) if len(vals) > 1 else None
    out = dict(
        benchmark="ablation_fashion",
        settings=vars(args),
        summary=summary,
        runs=results,
        seconds=round(time.time() - started, 1),
        torch=torch.__version__,
        sadcl=sadcl.__version__,
        machine=dict(
            cpu=platform.processor() or platform.machine(), cores=os.cpu_count(), threads=torch.get_num_threads()
        ),
    )
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_suffix(".tmp")
    tmp_path.write_text(json.dumps(out, indent=2) + "\n")
    os.replace(tmp_path, path)
    print("\n| row | runs | mAP | CF1 | OF1 |\n|---|---|---|---|---|")
    for row, s in summary.items():

        def fmt(k, s=s):
            return f"{s[k]:.2f}" + (f" ± {s[k + '_std']:.2f}" if s[k + "_std"] is not None else "")

        print(f"| {row} | {s['runs']} | {fmt('mAP')} | {fmt('CF1')} | {fmt('OF1')} |")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
