"""Correctness of the CUDA paths against CPU float64 references (for a GPU session; about a minute).

    python benchmarks/cuda_checks.py [--device cuda] [--out benchmarks/results/cuda_checks.json]
    python benchmarks/cuda_checks.py --device cpu      # the same checks on the CPU (a dry run of the script)

CI has no GPU, so the code paths that only run on CUDA (the ``torch.where`` memory-bank update, autocast,
fused kernels) are checked here, each against a reference computed on the CPU in float64:

* ``SampleContrastiveLoss`` (fixed and ``official``) and ``PrototypeContrastiveLoss``: values and gradients
  in float32 (TF32 off) against the dense formulation of ``dense_reference.py``; under bf16 autocast the
  loss stays finite and close (bf16 tolerance).
* ``MemoryBank.update`` on the device equals the authors' per-label loop on the CPU, bit for bit.
* The packaged default model ``sadcl_fashion_mosaic``: ``sadcl.inference.predict_scores`` on the device against the CPU
  on the example mosaics, and the same top label for every image.

Every check prints its error and tolerance; the script exits 1 if any fails and writes the JSON either way.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import _common
import torch
from bench_memory_bank import make_step
from dense_reference import dense_prototype_contrastive, dense_sample_contrastive, loop_memory_update

import sadcl
from sadcl.inference import predict_scores
from sadcl.train.losses import PrototypeContrastiveLoss, SampleContrastiveLoss
from sadcl.train.memory import MemoryBank

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "mosaics" / "test"


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.detach().double().cpu(), ref.detach().double().cpu()
    if not torch.isfinite(a).all():
        return float("inf")
    return float((a - ref).norm() / ref.norm().clamp(min=1e-30))


def value_and_grads(fn, *inputs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``fn(*inputs)`` and its gradients with respect to every input but the last (the targets)."""
    leaves = [x.detach().clone().requires_grad_(i < len(inputs) - 1) for i, x in enumerate(inputs)]
    out = fn(*leaves)
    grads = torch.autograd.grad(out, leaves[:-1])
    return out.detach(), list(grads)


def check_losses(device: torch.device, checks: list[dict[str, Any]]) -> None:
    B, V, C, D = 16, 2, 20, 64
    g = torch.Generator().manual_seed(11)
    y = _common.multilabel_targets(B, C, 2.9, seed=3)
    feats = torch.randn(B, V, C, D, generator=g, dtype=torch.float64)
    protos = torch.randn(C, D, generator=g, dtype=torch.float64)
    cases = {
        "sscl_fixed": (
            SampleContrastiveLoss(official=False),
            lambda f, t: dense_sample_contrastive(f, t, official=False),
            (feats, y),
        ),
        "sscl_official": (
            SampleContrastiveLoss(official=True),
            lambda f, t: dense_sample_contrastive(f, t, official=True),
            (feats, y),
        ),
        "pscl": (PrototypeContrastiveLoss(), dense_prototype_contrastive, (feats[:, 0], protos, y)),
    }
    for name, (ours, dense, inputs) in cases.items():
        ref, ref_grads = value_and_grads(dense, *[x.double() for x in inputs])
        dev_inputs = [x.float().to(device) for x in inputs]
        out, grads = value_and_grads(ours, *dev_inputs)
        err = max([rel_err(out, ref)] + [rel_err(a, b) for a, b in zip(grads, ref_grads)])
        checks.append(dict(check=f"{name} fp32 value+grads vs dense float64", error=err, tol=1e-4, ok=err < 1e-4))
        if device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out_bf16, _ = value_and_grads(ours, *dev_inputs)
            err = rel_err(out_bf16, ref)
            checks.append(
                dict(check=f"{name} under bf16 autocast vs dense float64", error=err, tol=2e-2, ok=err < 2e-2)
            )


def check_memory_bank(device: torch.device, checks: list[dict[str, Any]]) -> None:
    B, C, D = 32, 80, 256
    first = make_step(B, C, D, 2.9, seed=1)
    start, y, logits = first["embeddings"], first["targets"], first["logits"]
    g = torch.Generator().manual_seed(5)
    ours = MemoryBank(B, C, D).to(device)
    ours.bank.copy_(start.to(device))
    ref = start.clone()
    for step in range(3):  # a few steps with fresh embeddings, as in training
        h = torch.randn(B, C, D, generator=g)
        ours.update(h.to(device), y.to(device), logits.to(device))
        loop_memory_update(ref, h, y, logits)
        logits = logits.roll(step + 1, dims=0)
    same = torch.equal(ours.bank.cpu(), ref)
    checks.append(
        dict(
            check="MemoryBank.update on the device == per-label loop on the CPU",
            error=0.0 if same else 1.0,
            tol=0.0,
            ok=same,
        )
    )


def check_default_model(device: torch.device, checks: list[dict[str, Any]]) -> None:
    images = sorted(EXAMPLES.glob("*.png"))
    cpu_model = sadcl.create_model("sadcl_fashion_mosaic", pretrained=True)
    dev_model = sadcl.create_model("sadcl_fashion_mosaic", pretrained=True)
    cpu_scores = predict_scores(cpu_model, images, device="cpu")
    dev_scores = predict_scores(dev_model, images, device=device)
    err = float((dev_scores - cpu_scores).abs().max())
    checks.append(
        dict(
            check=f"sadcl_fashion_mosaic scores on {device.type} vs CPU ({len(images)} images, max abs)",
            error=err,
            tol=1e-3,
            ok=err < 1e-3,
        )
    )
    same_top = torch.equal(dev_scores.argmax(1), cpu_scores.argmax(1))
    checks.append(
        dict(check="same top label for every example image", error=0.0 if same_top else 1.0, tol=0.0, ok=same_top)
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", type=Path, default=_common.RESULTS_DIR / "cuda_checks.json")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("cuda_checks: no CUDA device is available (use --device cpu for a dry run)")
    # float32 checks compare true float32 arithmetic: no TF32 matrix products.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    checks: list[dict[str, Any]] = []
    check_losses(device, checks)
    check_memory_bank(device, checks)
    check_default_model(device, checks)
    device_name = _common.device_name(device)
    report = _common.result_header(
        "cuda_checks.py",
        argparse.Namespace(quick=False),
        argv,
        device=str(device),
        device_name=device_name,
        checks=checks,
        all_ok=all(c["ok"] for c in checks),
    )
    _common.write_json(args.out, report)
    _common.print_table(checks, ["check", "error", "tol", "ok"])
    print(f"device {device_name}: {'all passed' if report['all_ok'] else 'FAILED'}  results: {args.out}")
    return 0 if report["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
