"""One SADCL training step on a GPU: our default configuration against one shaped like the authors'.

    python benchmarks/bench_train_gpu.py [--compile] [--out benchmarks/results/train_gpu.json]
    python benchmarks/bench_train_gpu.py --device cpu --quick      # a tiny check that the script works

``sadcl_coco_448`` (random weights), B=32 images of 448 px, COCO-like labels, the full SADCL objective
(ASL + 100·SSCL + 50·PSCL) with the memory bank read before and updated after the losses, AdamW step.

* ``ours``: the library's defaults: frozen BatchNorm folded into the convolutions, bf16 autocast,
  channels_last model and input, fused AdamW, our losses (positive-only SSCL), vectorised
  ``MemoryBank.update``; with ``--compile`` the forward is ``torch.compile``d.
* ``authors``: frozen BatchNorm as a separate module, fp16 autocast with a GradScaler, NCHW, the dense (V·B·C)²
  contrastive loss and the cosine-similarity prototype loss of ``dense_reference.py``, the per-label Python loop for
  the bank (a device sync per positive label), AdamW without ``foreach``/``fused`` (the for-loop of older torch).
  The GradScaler's first steps overflow at its initial scale and skip the optimizer; warm-up goes on until
  a step is not skipped, so only steady-state steps are timed (skipped timed steps are counted).

Both models live on the device together; their steps alternate in rounds after warm-up (steps are timed
with ``torch.cuda.synchronize``). Memory: the static footprint (weights, gradients, optimizer state, bank)
and the step's extra peak (``max_memory_allocated`` − allocated at step start). Also timed on the device:
the memory-bank update alone (ours vs the loop). Plans for under 5 minutes on an H100 without
``--compile`` (compiling adds 1-3 minutes). Images are random tensors already on the device: the figure is
the compute step, not data loading. Exits with a message when CUDA is asked for and missing.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import _common
import torch
from bench_memory_bank import CONFIGS, QUICK_CONFIGS, make_step
from dense_reference import dense_prototype_contrastive, dense_sample_contrastive, loop_memory_update
from torch import Tensor

import sadcl
from sadcl.train.losses import AsymmetricLoss, SADCLCriterion
from sadcl.train.memory import MemoryBank
from sadcl.train.step import TrainForward as _TrainForward

_MiB = 1024 * 1024


class Setup:
    """Model, optimizer, bank and step function of one configuration."""

    def __init__(self, name: str, variant: str, batch: int, device: torch.device, use_compile: bool) -> None:
        self.name, self.device = name, device
        ours = name == "ours"
        torch.manual_seed(0)
        model = sadcl.create_model(variant, fold_frozen_bn=ours).to(device).train()
        if ours:
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.channels_last = ours
        self.amp_dtype = torch.bfloat16 if ours else torch.float16
        self.bank = MemoryBank(batch, model.num_classes, model.hidden_dim).to(device)
        self.bank.init_from_prototypes(model.prototypes)
        params = [p for p in model.parameters() if p.requires_grad]
        if ours:
            self.optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2, fused=True)
        else:
            self.optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2, foreach=False)
        self.scaler = torch.amp.GradScaler(device.type, enabled=not ours)
        forward = _TrainForward(model, project=True, prototypes=True)  # the trainer's forward
        self.forward: Callable[..., tuple[Tensor, ...]] = torch.compile(forward) if (ours and use_compile) else forward
        self.criterion = SADCLCriterion()  # ASL(γ−=4), SSCL(τ=0.2), PSCL(τ=0.07); weights 1, 100, 50
        self.asl = AsymmetricLoss()

    def losses(self, logits: Tensor, y: Tensor, z: Tensor, bank_z: Tensor, protos_z: Tensor) -> Tensor:
        if self.name == "ours":
            return self.criterion(logits, y, z, bank_z, protos_z)["loss"]
        views = torch.stack([z, bank_z], 1)
        return (
            self.asl(logits, y)
            + 100.0 * dense_sample_contrastive(views, y, official=True)
            + 50.0 * dense_prototype_contrastive(z, protos_z, y)
        )

    def step(self, x: Tensor, y: Tensor) -> None:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=self.amp_dtype):
            h, logits, z, bank_z, protos_z = self.forward(x, self.bank.read(x.shape[0]))
            loss = self.losses(logits, y, z, bank_z, protos_z)
        if self.name == "ours":
            self.bank.update(h.detach(), y, logits.detach())
        else:
            loop_memory_update(self.bank.bank, h.detach().float(), y, logits.detach().float())
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _allocated(device: torch.device) -> int | None:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else None


def bank_update_timing(device: torch.device, quick: bool, rounds: int) -> dict[str, Any]:
    """The memory-bank update alone on the device (COCO shape): ``MemoryBank.update`` vs the per-label loop."""
    cfg = (QUICK_CONFIGS if quick else CONFIGS)["coco"]
    B, C, D = cfg["B"], cfg["C"], cfg["D"]
    step = {k: v.to(device) for k, v in make_step(**cfg).items()}
    h, y, logits = step["embeddings"], step["targets"], step["logits"]
    bank = MemoryBank(B, C, D).to(device)
    loop_bank = bank.bank.clone()
    fns = {"ours": lambda: bank.update(h, y, logits), "loop": lambda: loop_memory_update(loop_bank, h, y, logits)}
    times = _common.alternate(fns, rounds=rounds, warmup=2, sync=lambda: _sync(device))
    if not torch.equal(bank.bank, loop_bank):
        raise SystemExit("bench_train_gpu: MemoryBank.update and the per-label loop disagree")
    out: dict[str, Any] = {"B": B, "C": C, "D": D, "positive_labels": int(y.sum())}
    for k, ts in times.items():
        out[f"time_{k}"] = _common.summary(ts)
    out["speedup_vs_loop"] = out["time_loop"]["median_s"] / out["time_ours"]["median_s"]
    return out


def main(argv: list[str] | None = None) -> dict:
    p = _common.parser(__doc__.splitlines()[0], "train_gpu.json")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (only meaningful with --quick)")
    p.add_argument("--compile", action="store_true", help="torch.compile our forward (adds compile time)")
    p.add_argument("--steps-per-round", type=int, default=None)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "bench_train_gpu: no CUDA device is available. Run it on a machine with an NVIDIA GPU, "
            "or check the script with `--device cpu --quick`."
        )
    _common.set_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the authors (both configurations); TF32 flags stay default
    variant, batch = ("sadcl_tiny", 4) if args.quick else ("sadcl_coco_448", 32)
    rounds = args.rounds or (2 if args.quick else 5)
    per_round = args.steps_per_round or (1 if args.quick else 4)
    warmup = 1 if args.quick else 3

    t_start = time.perf_counter()
    device_name = _common.device_name(device)
    report = _common.result_header(
        "bench_train_gpu.py",
        args,
        argv,
        device=str(device),
        device_name=device_name,
        model=variant,
        batch=batch,
        compile=bool(args.compile),
        configs={},
    )
    setups: dict[str, Setup] = {}
    static: dict[str, int | None] = {}
    for name in ("ours", "authors"):
        before = _allocated(device)
        setups[name] = Setup(name, variant, batch, device, args.compile)
        static[name] = None if before is None else _allocated(device) - before  # weights + bank so far
    size = setups["ours"].model.pretrained_cfg["input_size"][-1]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, size, size, generator=g).to(device)
    y = _common.multilabel_targets(batch, setups["ours"].model.num_classes, 2.9).to(device)

    for name, s in setups.items():
        t0 = time.perf_counter()
        for _ in range(warmup):
            s.step(x, y)
        extra = 0
        while s.scaler.is_enabled() and extra < 50:  # until the GradScaler stops skipping optimizer steps
            before = s.scaler.get_scale()
            s.step(x, y)
            extra += 1
            if s.scaler.get_scale() >= before:
                break
        _sync(device)
        report["configs"][name] = {"warmup_s": time.perf_counter() - t0, "warmup_steps": warmup + extra}
        if static[name] is not None:  # + gradients and optimizer state, allocated by the first steps
            static[name] += sum(
                t.numel() * t.element_size()
                for st in s.optimizer.state.values()
                for t in st.values()
                if torch.is_tensor(t)
            )
            static[name] += sum(q.numel() * q.element_size() for q in s.model.parameters() if q.requires_grad)

    times: dict[str, list[float]] = {name: [] for name in setups}
    peaks: dict[str, list[int]] = {name: [] for name in setups}
    skipped = {name: 0 for name in setups}
    scale_before = {name: s.scaler.get_scale() for name, s in setups.items()}  # 1.0 for a disabled scaler
    for r in range(rounds):
        for name in list(setups) if r % 2 == 0 else list(setups)[::-1]:
            s = setups[name]
            for _ in range(per_round):
                _sync(device)
                start_alloc = _allocated(device)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                t0 = time.perf_counter()
                s.step(x, y)
                _sync(device)
                times[name].append(time.perf_counter() - t0)
                scale = s.scaler.get_scale()
                skipped[name] += scale < scale_before[name]  # a GradScaler lowers its scale when it skips a step
                scale_before[name] = scale
                if start_alloc is not None:
                    peaks[name].append(torch.cuda.max_memory_allocated(device) - start_alloc)

    rows = []
    for name in setups:
        med = statistics.median(times[name])
        c = report["configs"][name]
        c.update(time=_common.summary(times[name]), images_per_s=batch / med, skipped_optimizer_steps=skipped[name])
        if peaks[name]:
            c["step_extra_peak_mib"] = max(peaks[name]) / _MiB
            c["static_mib"] = static[name] / _MiB
            c["total_peak_mib"] = c["static_mib"] + c["step_extra_peak_mib"]
        rows.append(
            {
                "config": name,
                "step ms": 1e3 * med,
                "images/s": batch / med,
                "step peak MiB": c.get("step_extra_peak_mib"),
                "static MiB": c.get("static_mib"),
            }
        )
    ours, theirs = report["configs"]["ours"], report["configs"]["authors"]
    report["speedup"] = ours["images_per_s"] / theirs["images_per_s"]
    if "total_peak_mib" in ours:
        report["peak_memory_ratio_authors_over_ours"] = theirs["total_peak_mib"] / ours["total_peak_mib"]
    report["memory_bank_update"] = bank_update_timing(device, args.quick, rounds=5 if args.quick else 30)
    report["wall_s"] = time.perf_counter() - t_start
    _common.write_json(args.out, report)
    _common.print_table(rows, ["config", "step ms", "images/s", "step peak MiB", "static MiB"])
    bank = report["memory_bank_update"]
    print(
        f"speedup {report['speedup']:.2f}x; bank update: ours {1e6 * bank['time_ours']['median_s']:.0f} us, "
        f"loop {1e6 * bank['time_loop']['median_s']:.0f} us ({bank['speedup_vs_loop']:.0f}x); "
        f"device {device_name}; wall {report['wall_s']:.0f} s  "
        f"results: {args.out}"
    )
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
