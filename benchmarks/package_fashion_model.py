"""Package a trained run as the shipped default model `sadcl_fashion_mosaic` and measure it.

Reads RUN/best.safetensors, stores its floating tensors in float16 (the package keeps the checkpoint under 20 MB;
the model computes in float32), writes sadcl/zoo/checkpoints/sadcl_fashion_mosaic.safetensors, records it in
weights.json (sha256, size, the Hub repo it would be published under; no revision until it is pushed), and
evaluates the *packaged* weights on test mosaics built from Fashion-MNIST's test split only.
Results: benchmarks/results/fashion_model.json.

    python benchmarks/package_fashion_model.py runs/fashion/step2 [--test 10000] [--seed 2]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

import sadcl
from sadcl.data.mosaic import MosaicDataset
from sadcl.data.transforms import eval_transform
from sadcl.train import evaluate_model
from sadcl.zoo.safetensors_io import read_safetensors, save_safetensors

REPO = Path(__file__).resolve().parents[1]
NAME = "sadcl_fashion_mosaic"
PACKAGED = "checkpoints/sadcl_fashion_mosaic.safetensors"  # relative to sadcl/zoo/
HUB_ID = "sadcl/sadcl_fashion_mosaic"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="a training output folder holding best.safetensors")
    ap.add_argument("--test", type=int, default=10000, help="test mosaics (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=2, help="seed of the test mosaics (default: %(default)s)")
    ap.add_argument("--out", default="benchmarks/results/fashion_model.json")
    args = ap.parse_args()

    state, meta = read_safetensors(Path(args.run) / "best.safetensors")
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    target = REPO / "sadcl" / "zoo" / PACKAGED
    sha = save_safetensors(half, target, meta)
    size = target.stat().st_size
    table_path = REPO / "weights.json"
    table = json.loads(table_path.read_text())
    table["weights"][NAME] = dict(
        hf_hub_id=HUB_ID, filename="model.safetensors", revision=None, sha256=sha, size=size, file=PACKAGED
    )
    tmp = table_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(table, indent=2) + "\n")
    os.replace(tmp, table_path)

    model = sadcl.create_model(NAME, pretrained=True).eval()  # the packaged file, verified
    cfg = model.pretrained_cfg
    test = MosaicDataset(
        "test", args.test, seed=args.seed, transform=eval_transform(56, mean=cfg["mean"], std=cfg["std"])
    )
    t0 = time.time()
    r = evaluate_model(model, test, batch_size=256, num_workers=0, device="cpu", amp="none")
    keys = ("mAP", "mAP_sklearn", "CP", "CR", "CF1", "CF1_harmonic", "OP", "OR", "OF1", "CF1_top3", "OF1_top3")
    result = dict(
        model=NAME,
        run=str(args.run),
        checkpoint=PACKAGED,
        sha256=sha,
        size_bytes=size,
        test_mosaics=args.test,
        test_seed=args.seed,
        metrics={k: round(float(r[k]), 2) for k in keys},
        per_class_AP=r["per_class_AP"],
        eval_seconds=round(time.time() - t0, 1),
        training_log=str(Path(args.run) / "log.jsonl"),
        torch=torch.__version__,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(json.dumps(result["metrics"], indent=2))
    print(f"packaged {target} ({size / 1e6:.1f} MB, sha256 {sha}); wrote {out}")


if __name__ == "__main__":
    main()
