"""Contrastive losses, forward + backward: ours (positive-only, REFERENCE c.2) against the authors' dense procedure.

    python benchmarks/bench_losses.py [--quick] [--threads N] [--out benchmarks/results/losses.json]

Configurations: COCO (B=32, V=2 views, C=80, D=1024, about 2.9 positive labels per image), where every loss is
compared with its dense counterpart from ``dense_reference.py`` (checked to agree first, values and gradients),
and VG-500 (B=64, C=500), ours only: the dense Gram matrix would be (64·2·500)² = 4.1 G entries (16 GiB) per
matrix. Time: median of alternating rounds after warm-up. Memory: extra peak RSS of one forward + backward in
a fresh child process (``_common.peak_extra_rss``). Short workloads are repeated within a timed call (>= 0.2 s)
and reported per call. Targets: at C=80 the sample loss is >= 20x faster and
needs >= 10x less extra peak memory than dense; at C=500 every loss needs <= 1 GiB extra.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import _common
import torch
from dense_reference import dense_prototype_contrastive, dense_sample_contrastive

from sadcl.train.losses import PrototypeContrastiveLoss, SampleContrastiveLoss

# positives_per_image: COCO-2014 train has 2.9 labels per image on average; VG-500 is far denser (it keeps
# the 500 most frequent object names of each image): 13 per image is our assumption, not a measured figure.
CONFIGS = {
    "coco": dict(B=32, V=2, C=80, D=1024, positives_per_image=2.9, dense=True),
    "vg500": dict(B=64, V=2, C=500, D=1024, positives_per_image=13.0, dense=False),
}
QUICK_CONFIGS = {
    "coco": dict(B=4, V=2, C=10, D=16, positives_per_image=2.0, dense=True),
    "vg500": dict(B=4, V=2, C=24, D=16, positives_per_image=4.0, dense=False),
}
LOSSES = ("sample_fixed", "sample_official", "prototype")
TARGET_SPEEDUP, TARGET_MEMORY_RATIO, TARGET_VG_MIB = 20.0, 10.0, 1024.0
PRELOAD = (__name__, "_common", "dense_reference", "sadcl.train.losses")  # for the peak-memory children


def make_inputs(B: int, V: int, C: int, D: int, positives_per_image: float, seed: int = 0, **_: Any) -> dict:
    """Projected label embeddings of both views, prototypes and labels (leaf tensors that require grad)."""
    g = torch.Generator().manual_seed(seed + 1)
    features = torch.randn(B, V, C, D, generator=g).requires_grad_(True)
    embeddings = torch.randn(B, C, D, generator=g).requires_grad_(True)
    prototypes = torch.randn(C, D, generator=g).requires_grad_(True)
    return dict(
        features=features,
        embeddings=embeddings,
        prototypes=prototypes,
        targets=_common.multilabel_targets(B, C, positives_per_image, seed),
    )


def loss_fn(loss: str, impl: str) -> Callable[[dict], torch.Tensor]:
    """``inputs → scalar loss`` for one loss (``LOSSES``) and implementation (``ours`` | ``dense``)."""
    if loss == "prototype":
        if impl == "ours":
            module = PrototypeContrastiveLoss()
            return lambda t: module(t["embeddings"], t["prototypes"], t["targets"])
        return lambda t: dense_prototype_contrastive(t["embeddings"], t["prototypes"], t["targets"])
    official = loss == "sample_official"
    if impl == "ours":
        module = SampleContrastiveLoss(official=official)
        return lambda t: module(t["features"], t["targets"])
    return lambda t: dense_sample_contrastive(t["features"], t["targets"], official=official)


def _leaves(t: dict) -> list[torch.Tensor]:
    return [t["features"], t["embeddings"], t["prototypes"]]


def workload(loss: str, impl: str, inputs: dict) -> Callable[[], None]:
    """One forward + backward; gradients are dropped afterwards so every call allocates them afresh."""
    fn = loss_fn(loss, impl)

    def run() -> None:
        fn(inputs).backward()
        for leaf in _leaves(inputs):
            leaf.grad = None

    return run


def memory_setup(loss: str, impl: str, config: dict) -> Callable[[], None]:
    """Peak-memory child entry point: build the inputs, return the workload."""
    return workload(loss, impl, make_inputs(**config))


def agreement(loss: str, inputs: dict) -> dict[str, float]:
    """Relative differences of value and gradients, ours vs dense, on the benchmark inputs."""
    out = {}
    results = {}
    for impl in ("ours", "dense"):
        value = loss_fn(loss, impl)(inputs)
        grads = torch.autograd.grad(value, _leaves(inputs), allow_unused=True)
        results[impl] = (
            value.detach(),
            [g if g is not None else torch.zeros_like(x) for g, x in zip(grads, _leaves(inputs))],
        )
    (va, ga), (vb, gb) = results["ours"], results["dense"]
    out["value_ours"], out["value_dense"] = float(va), float(vb)
    out["value_rel_diff"] = float((va - vb).abs() / vb.abs().clamp(min=1e-12))
    scale = max(float(g.abs().max()) for g in gb)
    out["grad_max_abs_diff_rel_to_max_grad"] = max(float((a - b).abs().max()) for a, b in zip(ga, gb)) / max(
        scale, 1e-30
    )
    return out


def main(argv: list[str] | None = None) -> dict:
    p = _common.parser(__doc__.splitlines()[0], "losses.json")
    p.add_argument("--memory-repeats", type=int, default=None, help="child processes per memory figure")
    args = p.parse_args(argv)
    _common.set_threads(args.threads)
    configs = QUICK_CONFIGS if args.quick else CONFIGS
    rounds = args.rounds or (2 if args.quick else 7)
    mem_repeats = args.memory_repeats or (1 if args.quick else 2)
    min_call_s = 0.0 if args.quick else 0.2
    threads = torch.get_num_threads()

    report = _common.result_header(
        "bench_losses.py",
        args,
        argv,
        inputs={},
        results=[],
        memory_method=_common.__doc__.split("Peak memory protocol")[1].strip(),
        memory_method_check=_common.memory_method_check(8 if args.quick else 64, PRELOAD),
    )
    rows = []
    for name, cfg in configs.items():
        inputs = make_inputs(**cfg)
        y = inputs["targets"]
        report["inputs"][name] = dict(
            cfg, positives_per_image_realised=float(y.sum() / y.shape[0]), positive_embeddings_K=int(cfg["V"] * y.sum())
        )
        impls = ("ours", "dense") if cfg["dense"] else ("ours",)
        checks = {loss: agreement(loss, inputs) for loss in LOSSES} if cfg["dense"] else {}
        for loss, check in checks.items():
            if check["value_rel_diff"] > 1e-4 or check["grad_max_abs_diff_rel_to_max_grad"] > 1e-4:
                raise SystemExit(f"bench_losses: ours and dense disagree on {loss} ({name}): {check}")
        # A timed call repeats a short workload for >= 0.2 s: one 10 ms call is at the mercy of the scheduler.
        fns = {
            f"{loss}/{impl}": _common.repeat_min_duration(workload(loss, impl, inputs), min_call_s)
            for loss in LOSSES
            for impl in impls
        }
        times = _common.alternate(fns, rounds=rounds, warmup=1)
        for loss in LOSSES:
            row: dict[str, Any] = {"config": name, "loss": loss}
            for impl in impls:
                fn = fns[f"{loss}/{impl}"]
                row[f"time_{impl}"] = dict(
                    _common.summary([t / fn.n for t in times[f"{loss}/{impl}"]]), calls_per_timed_call=fn.n
                )
                row[f"memory_{impl}"] = _common.peak_extra_rss(
                    memory_setup,
                    dict(loss=loss, impl=impl, config=cfg),
                    threads=threads,
                    repeats=mem_repeats,
                    preload=PRELOAD,
                )
            ours_s, ours_mib = row["time_ours"]["median_s"], row["memory_ours"]["extra_peak_mib"]
            if cfg["dense"]:
                row["agreement"] = checks[loss]
                row["speedup"] = row["time_dense"]["median_s"] / ours_s
                row["memory_ratio"] = row["memory_dense"]["extra_peak_mib"] / max(ours_mib, 1e-9)
                if loss.startswith("sample"):
                    row["targets"] = {
                        "speedup_min": TARGET_SPEEDUP,
                        "memory_ratio_min": TARGET_MEMORY_RATIO,
                        "met": row["speedup"] >= TARGET_SPEEDUP and row["memory_ratio"] >= TARGET_MEMORY_RATIO,
                    }
            else:
                row["targets"] = {"extra_peak_mib_max": TARGET_VG_MIB, "met": ours_mib <= TARGET_VG_MIB}
            report["results"].append(row)
            rows.append(
                {
                    "config": name,
                    "loss": loss,
                    "ours ms": 1e3 * ours_s,
                    "dense ms": 1e3 * row["time_dense"]["median_s"] if cfg["dense"] else None,
                    "speedup": row.get("speedup"),
                    "ours MiB": ours_mib,
                    "dense MiB": row["memory_dense"]["extra_peak_mib"] if cfg["dense"] else None,
                    "mem ratio": row.get("memory_ratio"),
                    "target met": row.get("targets", {}).get("met"),
                }
            )
    _common.write_json(args.out, report)
    _common.print_table(
        rows, ["config", "loss", "ours ms", "dense ms", "speedup", "ours MiB", "dense MiB", "mem ratio", "target met"]
    )
    print(f"threads={threads}  results: {args.out}")
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
