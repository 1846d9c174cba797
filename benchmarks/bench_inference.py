"""Inference throughput of ``sadcl.predict`` (tensor input), as a share of this machine's fp32 matmul rate.

    python benchmarks/bench_inference.py [--quick] [--threads N] [--compile] [--out benchmarks/results/inference.json]

``sadcl_coco_448`` (random weights) at batch 1 and 4. Contenders, timed in alternating rounds with a
2048×2048 @ 2048×2048 fp32 matmul (the machine's reference rate, measured in the same rounds):

* ``eager_nchw``: the baseline, plain eager: ``model(x)`` in ``torch.inference_mode`` with NCHW model and
  input and each frozen BatchNorm as its own module (``fold_frozen_bn=False``, as timm builds it);
* ``predict``: ``sadcl.predict(model, x)`` (channels_last model and input, sigmoid, ranked label dicts);
* ``eager_channels_last``: the forward alone of the default model (frozen BatchNorm folded into the
  convolutions) in channels_last: what ``predict`` runs;
* ``eager_mixed_layouts``: channels_last input into the baseline's NCHW model;
* ``jit_freeze``: ``torch.jit.trace`` + ``freeze`` + ``optimize_for_inference`` of the channels_last model;
* ``compile`` (with ``--compile``; compiling the ResNet-101 takes minutes on 2 cores): ``torch.compile``.

FLOPs are counted once per batch size with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and
matrix products; attention-score products inside SDPA are not counted, so shares are slight under-estimates).
Share = (FLOPs / seconds) / (matmul FLOPs / matmul seconds), per round; the median over rounds is reported.
Target: ``predict`` >= 35 % at batch 4. Also: images/s of the default small model (``sadcl_fashion_mosaic``
when registered, else ``sadcl_tiny``) through ``predict``. bf16 is not used: results must stay fp32.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import _common
import torch
from torch.utils.flop_counter import FlopCounterMode

import sadcl

TARGET_SHARE = 0.35


@contextlib.contextmanager
def _no_grad_params(model: torch.nn.Module) -> Iterator[None]:
    """FlopCounterMode's module tracker needs either autograd or no parameter that requires grad."""
    flags = [p.requires_grad for p in model.parameters()]
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        yield
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)


def count_flops(model: torch.nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """FLOPs of one forward of ``model`` on ``x`` (total and per aten op)."""
    with _no_grad_params(model), torch.no_grad():
        counter = FlopCounterMode(display=False)
        with counter:
            model(x)
    per_op = {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return {"total": int(counter.get_total_flops()), "per_op": per_op}


def small_model_name() -> str:
    return "sadcl_fashion_mosaic" if "sadcl_fashion_mosaic" in sadcl.list_models() else "sadcl_tiny"


def _jit(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation and tracer warnings
        traced = torch.jit.trace(model, x, check_trace=False)
        return torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))


def contenders(
    model_nchw: torch.nn.Module, model_cl: torch.nn.Module, x: torch.Tensor, use_compile: bool, notes: dict[str, Any]
) -> dict[str, Callable[[], Any]]:
    """Name → zero-argument call, for one batch ``x``."""
    x_cl = x.contiguous(memory_format=torch.channels_last)
    batch = x.shape[0]

    def eager(m: torch.nn.Module, inp: torch.Tensor) -> Callable[[], Any]:
        def run() -> Any:
            with torch.inference_mode():
                return m(inp)

        return run

    fns: dict[str, Callable[[], Any]] = {
        "eager_nchw": eager(model_nchw, x),
        "predict": lambda: sadcl.predict(model_cl, x, batch_size=batch),
        "eager_channels_last": eager(model_cl, x_cl),
        # What predict ran before it converted the model: channels_last input, NCHW weights.
        "eager_mixed_layouts": eager(model_nchw, x_cl),
    }
    try:
        t0 = time.perf_counter()
        frozen = _jit(model_cl, x_cl)
        notes["jit_freeze_build_s"] = time.perf_counter() - t0
        fns["jit_freeze"] = eager(frozen, x_cl)
    except Exception as e:  # an option: report why it is missing rather than failing the benchmark
        notes["jit_freeze_error"] = f"{type(e).__name__}: {e}"
    if use_compile:
        try:
            compiled = torch.compile(model_cl)
            t0 = time.perf_counter()
            eager(compiled, x_cl)()
            notes["compile_first_call_s"] = time.perf_counter() - t0
            fns["compile"] = eager(compiled, x_cl)
        except Exception as e:
            notes["compile_error"] = f"{type(e).__name__}: {e}"
    return fns


def main(argv: list[str] | None = None) -> dict:
    p = _common.parser(__doc__.splitlines()[0], "inference.json")
    p.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile on CPU)")
    args = p.parse_args(argv)
    _common.set_threads(args.threads)
    quick = args.quick
    name = "sadcl_tiny" if quick else "sadcl_coco_448"
    batches = (1, 2) if quick else (1, 4)
    rounds = args.rounds or (2 if quick else 5)
    n_mm = 256 if quick else 2048

    torch.manual_seed(0)
    model_nchw = sadcl.create_model(name, fold_frozen_bn=False).eval()
    model_cl = sadcl.create_model(name).eval()  # the default: frozen BatchNorm folded (same state_dict)
    model_cl.load_state_dict(model_nchw.state_dict())
    model_cl.to(memory_format=torch.channels_last)
    size = model_nchw.pretrained_cfg["input_size"][-1]
    a = torch.randn(n_mm, n_mm)
    matmul_flops = 2 * n_mm**3
    report = _common.result_header(
        "bench_inference.py",
        args,
        argv,
        model=name,
        image_size=size,
        matmul={"n": n_mm, "flops": matmul_flops},
        results=[],
    )
    rows = []
    for batch in batches:
        x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
        flops = count_flops(model_nchw, x)
        notes: dict[str, Any] = {}
        fns = {"matmul": lambda: a @ a, **contenders(model_nchw, model_cl, x, args.compile, notes)}
        # Same scores from every contender (predict returns ranked dicts: compare its probabilities).
        ref = torch.sigmoid(fns["eager_nchw"]())
        got = torch.tensor([[d[n] for n in model_cl.label_names] for d in fns["predict"]()])
        notes["predict_max_abs_diff_vs_eager_nchw"] = float((got - ref).abs().max())
        for k in ("eager_channels_last", "eager_mixed_layouts", "jit_freeze", "compile"):
            if k in fns:
                notes[f"{k}_max_abs_diff_vs_eager_nchw"] = float((torch.sigmoid(fns[k]()) - ref).abs().max())
        times = _common.alternate(fns, rounds=rounds, warmup=1)
        rates = [matmul_flops / t for t in times["matmul"]]
        result: dict[str, Any] = {
            "batch": batch,
            "flops_per_forward": flops,
            "notes": notes,
            "matmul_gflops": _common.summary([r / 1e9 for r in rates]),
            "contenders": {},
        }
        for k, ts in times.items():
            if k == "matmul":
                continue
            shares = [flops["total"] / t / r for t, r in zip(ts, rates)]
            med = statistics.median(ts)
            result["contenders"][k] = {
                "time": _common.summary(ts),
                "seconds_per_image": med / batch,
                "images_per_s": batch / med,
                "gflops_achieved": flops["total"] / med / 1e9,
                "share_of_matmul_rate": statistics.median(shares),
            }
            rows.append(
                {
                    "batch": batch,
                    "contender": k,
                    "s/image": med / batch,
                    "GFLOP/s": flops["total"] / med / 1e9,
                    "share": statistics.median(shares),
                }
            )
        base = result["contenders"]["eager_nchw"]["time"]["median_s"]
        for c in result["contenders"].values():
            c["speedup_vs_eager_nchw"] = base / c["time"]["median_s"]
        if batch == max(batches):
            share = result["contenders"]["predict"]["share_of_matmul_rate"]
            result["target"] = {"predict_share_min": TARGET_SHARE, "met": share >= TARGET_SHARE}
        report["results"].append(result)

    # The default small model through predict, from a tensor batch, at its own resolution.
    small = small_model_name()
    torch.manual_seed(0)
    m = sadcl.create_model(small).eval()
    s = m.pretrained_cfg["input_size"][-1]
    n = 8 if quick else 64
    xs = torch.randn(n, 3, s, s)
    t = _common.alternate({"predict": lambda: sadcl.predict(m, xs)}, rounds=rounds, warmup=1)["predict"]
    report["small_model"] = {
        "model": small,
        "image_size": s,
        "images": n,
        "batch_size": 16,
        "time": _common.summary(t),
        "images_per_s": n / statistics.median(t),
    }
    rows.append({"batch": 16, "contender": f"predict {small}", "s/image": statistics.median(t) / n})
    _common.write_json(args.out, report)
    _common.print_table(rows, ["batch", "contender", "s/image", "GFLOP/s", "share"])
    print(
        f"matmul {n_mm}^3 reference; threads={torch.get_num_threads()}; {small}: "
        f"{report['small_model']['images_per_s']:.1f} images/s  results: {args.out}"
    )
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
