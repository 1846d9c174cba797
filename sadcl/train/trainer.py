"""Fine-tuning SADCL (and its Query2Label baseline): the recipe's training loop, evaluation and exact resume.

The recipe (REFERENCE d): AdamW (lr 5e-5, weight decay 5e-3, one parameter group of every trainable
parameter), OneCycleLR stepped every iteration (pct_start 0.2; AdamW's β1 cycles 0.95 → 0.85 → 0.95),
an EMA of the weights (decay 0.9998) evaluated next to the raw model after every epoch, AMP on CUDA,
early stopping, and one of two objectives:

* ``objective="sadcl"``: ``ASL + 100·SSCL + 50·PSCL`` with a memory bank (the paper's step 2). Each step:
  ``h = forward_features(x)``, ``logits = forward_head(h)``, ``z = project(h)``, the second SSCL view is
  ``project(bank.read(B))`` (the bank is detached: only the projection head gets gradient through it), the
  prototypes are ``project(model.prototypes)``; then ``bank.update(h, y, logits)``. Before the first step
  the prototypes are initialised from the training images (eval transform) and the bank from them.
* ``objective="asl"``: the asymmetric loss alone (the Query2Label baseline, step 1).

Data parallel with ``torchrun`` (gloo on CPU, NCCL on CUDA): ``batch_size`` is the *global* batch; every
process keeps its own memory bank; the contrastive terms are computed on the embeddings gathered from all
processes, so ``W`` processes train exactly like one process on the union batch (up to float rounding).
The output folder receives ``last.pt`` (training checkpoint, every epoch, atomic), ``best.safetensors``
(publishable weights of the best raw/EMA model), ``log.jsonl`` and ``config.json``.
"""

from __future__ import annotations

import inspect
import json
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from .._atomic import atomic_write_text
from ..data import eval_transform, train_transform
from ..data.datasets import unwrap_worker_errors
from ..data.preprocessing import from_pretrained_cfg
from ..model import SADCL
from ..zoo.loading import header_for
from .checkpoint import (
    CHECKPOINT_FORMAT,
    atomic_torch_save,
    export_weights,
    load_training_checkpoint,
    rng_state,
    set_rng_state,
)
from .config import ConfigError, InexactResumeWarning, TrainConfig
from .data import build_dataset, check_image_files, label_order, unwrapped, with_transform
from .distributed import (
    ShardedBatchSampler,
    all_reduce,
    broadcast_object,
    cleanup_distributed,
    gather_objects,
    gather_strided,
    init_distributed,
)
from .early_stopping import EarlyStopping
from .ema import ModelEma
from .evaluation import LOGGED_METRICS, dataset_scores, eval_loader, score_metrics
from .log import append_record
from .losses import AsymmetricLoss, PrototypeContrastiveLoss, SADCLCriterion, SampleContrastiveLoss
from .memory import MemoryBank, init_prototypes_, init_prototypes_sharded_
from .models import run_model
from .resume import check_resumable
from .rundir import check_output, prepare_output
from .runtime import amp_dtype, autocast, device_type, resolve_device, seed_everything
from .step import TERMS, TrainForward, step_losses

__all__ = ["NonFiniteLossError", "Trainer", "train"]

_DDP_PARAMS = inspect.signature(DistributedDataParallel.__init__).parameters


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or infinite: the run stops, and the last good checkpoint is kept."""


class Trainer:
    """Fine-tunes a SADCL model with the recipe (see the module docstring); :meth:`fit` runs it.

    Datasets and the model come from ``config`` unless given: ``train_dataset``/``val_dataset`` are used
    with their own transforms (``prototype_dataset`` defaults to a copy of the training set with the eval
    transform); a given ``model`` is trained in place. ``on_epoch`` is called on rank 0 with each epoch's
    log record (losses, lr, throughput, validation metrics, best so far). Parameters outside the loss are
    frozen: with ``objective="asl"`` the projection head and the prototypes. ``fit`` runs once.
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        model: SADCL | None = None,
        train_dataset: Dataset | None = None,
        val_dataset: Dataset | None = None,
        prototype_dataset: Dataset | None = None,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.config = cfg = config
        self.on_epoch = on_epoch
        ckpt = load_training_checkpoint(cfg.resume) if cfg.resume else None
        if ckpt is not None:
            check_resumable(ckpt, cfg)
        check_output(cfg)  # before any work: nothing of an earlier run is replaced unless asked
        self.dist = init_distributed(device_type(cfg.device), cfg.dist_url)
        try:
            self._setup(ckpt, model, train_dataset, val_dataset, prototype_dataset)
        except BaseException:
            cleanup_distributed(self.dist)
            raise

    # -- setup ----------------------------------------------------------------------------------------
    def _setup(self, ckpt, model, train_dataset, val_dataset, prototype_dataset) -> None:
        cfg, info = self.config, self.dist
        self.device = resolve_device(cfg.device, info)
        self.is_main = info.is_main
        self.out = Path(cfg.output_dir)
        if cfg.batch_size % info.world_size:
            raise ConfigError.about(
                "batch_size",
                f"{cfg.batch_size} (global) is not divisible by the {info.world_size} processes; pick a multiple",
            )
        self.local_batch = cfg.batch_size // info.world_size
        self.pin = self.device.type == "cuda"
        if self.pin:
            torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick its fastest kernels (recipe)
        self.eval_batch = cfg.eval_batch_size or self.local_batch
        seed_everything(cfg.seed)  # the same model initialisation in every process
        self._setup_data_and_model(ckpt, model, train_dataset, val_dataset, prototype_dataset)
        if self.is_main:  # everything checked: the run folder is written from here on
            prepare_output(cfg)
        self._setup_objective(ckpt)
        self._setup_optimisation()
        self.tracker = EarlyStopping(cfg.patience)
        self.history: list[dict[str, Any]] = []
        self.start_epoch, self.global_step, self.step_lr = 0, 0, cfg.lr
        if ckpt is not None:
            self._load_state(ckpt)  # restores the RNG states last
        else:
            seed_everything(cfg.seed + info.rank)  # per-process dropout / augmentation streams
            if self.is_main:
                atomic_write_text(self.out / "config.json", json.dumps(cfg.to_dict(), indent=2, default=str) + "\n")
        self._epochs_done = self.start_epoch  # epochs with a checkpoint on disk
        self._metrics_warned = False
        self._export_error: str | None = None

    def _setup_data_and_model(self, ckpt, model, train_dataset, val_dataset, prototype_dataset) -> None:
        """Datasets, samplers and the model; the label set comes from the training data."""
        cfg, info = self.config, self.dist
        built_here = train_dataset is None
        if built_here:
            if cfg.data is None:
                raise ValueError("no training data: set TrainConfig.data (sadcl train --data) or pass train_dataset")
            train_dataset = build_dataset(cfg.data, None)
        self.train_sampler = ShardedBatchSampler(
            len(train_dataset), self.local_batch, rank=info.rank, world_size=info.world_size, seed=cfg.seed
        )
        label_names = list(train_dataset.label_names)
        val_built_here = val_dataset is None and cfg.val_data is not None
        if val_built_here:  # read now, its transform set below: its images are checked before the model is built
            val_dataset = build_dataset(cfg.val_data, None, label_names=label_names)
        check_image_files(train_dataset, "training")
        check_image_files(val_dataset, "validation")
        self.model = run_model(cfg, model, label_names, ckpt)
        size = self.model.config["img_size"]
        pre = from_pretrained_cfg(self.model.pretrained_cfg, size)  # the model's own normalisation
        norm = {"mean": pre.mean, "std": pre.std, "interpolation": pre.interpolation}
        self.eval_tf = eval_transform(size, **norm)
        if built_here:  # datasets passed in keep their own transforms
            train_dataset.transform = (
                self.eval_tf if cfg.augment == "none" else train_transform(size, cfg.augment, flip=cfg.flip, **norm)
            )
        if val_built_here:
            val_dataset.transform = self.eval_tf
        self.train_set, self.val_set, self.proto_set = train_dataset, val_dataset, prototype_dataset
        self.val_order = None
        if val_dataset is not None:
            self.val_order = label_order(list(val_dataset.label_names), label_names, "validation data")
        self.train_loader = DataLoader(
            train_dataset, batch_sampler=self.train_sampler, num_workers=cfg.num_workers, pin_memory=self.pin
        )
        self.val_loader = (
            None if val_dataset is None else eval_loader(val_dataset, self.eval_batch, cfg.num_workers, self.pin, info)
        )
        self.steps_per_epoch = len(self.train_sampler)
        self.amp_dtype = amp_dtype(cfg.amp, self.device)
        self.channels_last = cfg.channels_last and self.device.type == "cuda"
        self.model.to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)

    def _setup_objective(self, ckpt) -> None:
        """Loss terms, what trains, prototypes, memory bank, and the (DDP-wrapped) training forward."""
        cfg = self.config
        self.sadcl = cfg.objective == "sadcl"
        w_asl, w_sample, w_proto = cfg.loss_weights if self.sadcl else (cfg.loss_weights[0], 0.0, 0.0)
        project, use_protos = w_sample > 0 or w_proto > 0, w_proto > 0
        # Parameters outside the loss are frozen: DDP requires every trainable parameter to get a gradient.
        if not project:
            self.model.proj_head.requires_grad_(False)
        if not use_protos:
            self.model.prototypes.requires_grad_(False)
        self.criterion = SADCLCriterion(
            AsymmetricLoss(cfg.gamma_neg, cfg.gamma_pos, cfg.asl_clip, cfg.asl_eps),
            SampleContrastiveLoss(cfg.sample_temperature, official=cfg.official_sample_loss),
            PrototypeContrastiveLoss(cfg.prototype_temperature),
            weights=(w_asl, w_sample, w_proto),
        )
        if self.sadcl and ckpt is None:
            self._init_prototypes()
        self.bank = None
        if w_sample > 0:
            self.bank = MemoryBank(
                self.local_batch, self.model.num_classes, self.model.hidden_dim, threshold=cfg.memory_threshold
            ).to(self.device)
            self.bank.init_from_prototypes(self.model.prototypes)
        fwd: nn.Module = TrainForward(self.model, project, use_protos)
        if self.dist.world_size > 1:
            # Buffers (frozen BN statistics) never change: no per-step broadcast. The banks live outside
            # the wrapped module, so each process keeps its own.
            no_sync = (
                {"forward_sync_buffers": False}
                if "forward_sync_buffers" in _DDP_PARAMS
                else {"broadcast_buffers": False}
            )
            fwd = DistributedDataParallel(fwd, device_ids=[self.device.index] if self.pin else None, **no_sync)
        # Compiled after the DDP wrap, as torch recommends (its optimizer splits the graph at bucket boundaries).
        self.forward_module = torch.compile(fwd) if cfg.compile else fwd

    def _setup_optimisation(self) -> None:
        """EMA, AdamW (one group of every trainable parameter), OneCycle per step, grad scaler (fp16 only)."""
        cfg = self.config
        self.ema = ModelEma(self.model, cfg.ema_decay)  # after DDP's initial broadcast: the same in every process
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        # Fused (one kernel for every parameter) on CUDA; the default for-each implementation elsewhere.
        fused = self.device.type == "cuda" or None
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
        self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
            self.optimizer,
            max_lr=cfg.lr,
            epochs=cfg.epochs,
            steps_per_epoch=self.steps_per_epoch,
            pct_start=cfg.pct_start,
            cycle_momentum=True,
            base_momentum=0.85,
            max_momentum=0.95,
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    def _init_prototypes(self) -> None:
        """Prototypes = mean embedding of confidently predicted positives (eval transform), over all processes."""
        cfg, info = self.config, self.dist
        dataset = (
            self.proto_set
            if self.proto_set is not None
            else with_transform(self.train_set, self.eval_tf, "prototype initialisation")
        )
        loader = eval_loader(dataset, self.eval_batch, cfg.num_workers, self.pin, info)
        init = init_prototypes_ if info.world_size == 1 else init_prototypes_sharded_
        with unwrap_worker_errors():
            counts = init(
                self.model,
                loader,
                max_batches=cfg.prototype_batches,
                threshold=cfg.prototype_threshold,
                device=self.device,
            )
        self._log(
            {
                "event": "prototypes",
                "classes_with_confident_positives": int((counts > 0).sum()),
                "num_classes": self.model.num_classes,
                "threshold": cfg.prototype_threshold,
            }
        )

    def _load_state(self, ckpt: Mapping[str, Any]) -> None:
        info = self.dist
        self.model.load_state_dict(ckpt["model"])
        self.ema.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.tracker.load_state_dict(ckpt["tracker"])
        self.history = list(ckpt.get("history", []))
        self.start_epoch, self.global_step = int(ckpt["epoch"]), int(ckpt["global_step"])
        saved_world = int(ckpt["world_size"])
        exact = saved_world == info.world_size
        if self.bank is not None:
            # The banks side by side are one global bank whose slot i pairs with position i of the global
            # batch (ShardedBatchSampler), so they can be re-cut for another number of processes.
            bank = torch.cat(list(ckpt["banks"]), 0)
            rows = slice(info.rank * self.local_batch, (info.rank + 1) * self.local_batch)
            self.bank.bank.copy_(bank[rows])
        if not exact:
            warnings.warn(
                InexactResumeWarning(
                    f"resuming a {saved_world}-process run with {info.world_size} processes: banks are re-split, "
                    "but per-process random streams differ, so the run is not bit-exact"
                ),
                stacklevel=3,
            )
        rngs = ckpt["rng"]
        if info.rank < len(rngs):
            set_rng_state(rngs[info.rank])
        else:
            seed_everything(self.config.seed + info.rank + 1000 * self.start_epoch)

    # -- logging --------------------------------------------------------------------------------------
    def _log(self, record: Mapping[str, Any]) -> None:
        if self.is_main:
            append_record(self.out / "log.jsonl", record)

    def _progress(self, epoch: int):
        enabled = self.config.progress
        if enabled is None:
            enabled = sys.stderr.isatty()
        from tqdm import tqdm

        return tqdm(
            total=self.steps_per_epoch,
            desc=f"epoch {epoch}",
            unit="step",
            dynamic_ncols=True,
            leave=False,
            disable=not (enabled and self.is_main),
        )

    # -- one step ---------------------------------------------------------------------------------------
    def _step(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        cfg = self.config
        with autocast(self.device, self.amp_dtype):
            bank_h = self.bank.read(x.shape[0]) if self.bank is not None else None
            out = self.forward_module(x, bank_h)
            h, logits = out[0], out[1]
            z, bank_z, protos_z = out[2:] if len(out) == 5 else (None, None, None)
            terms = step_losses(self.criterion, logits, y, z, bank_z, protos_z)
        if self.bank is not None:
            self.bank.update(h.detach(), y, logits.detach())  # detached: before or after backward is the same
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(terms["loss"]).backward()
        if cfg.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, cfg.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step_lr = self.optimizer.param_groups[0]["lr"]  # the lr this step used (logged)
        self.scheduler.step()
        self.ema.update(self.model)
        return terms

    # -- one epoch --------------------------------------------------------------------------------------
    def _train_one_epoch(self, epoch: int) -> dict[str, Any]:
        """Trains one epoch. Loss values stay on the device: they are summed there and their finiteness
        is tracked there (the first bad step and its terms), and read back only every ``log_interval``
        steps and at the end of the epoch (one host synchronisation each), never once per step."""
        cfg, dev = self.config, self.device
        self.model.train()
        self.train_sampler.set_epoch(epoch)
        window = torch.zeros(len(TERMS), device=dev)
        first_bad = torch.full((), -1, dtype=torch.long, device=dev)
        bad_terms = torch.zeros(len(TERMS), dtype=torch.bool, device=dev)
        zero = torch.zeros((), device=dev)
        totals = dict.fromkeys(TERMS, 0.0)
        seen, window_steps = 0, 0
        images_per_step = self.local_batch * self.dist.world_size
        t_epoch = t_window = time.perf_counter()
        bar = self._progress(epoch)
        try:
            for i, (x, y) in enumerate(unwrapped(self.train_loader)):
                x = x.to(dev, non_blocking=True)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                y = y.to(dev, torch.float32, non_blocking=True)
                terms = self._step(x, y)
                values = torch.stack([terms.get(k, zero).detach().float() for k in TERMS])
                finite = torch.isfinite(values)
                newly_bad = (first_bad < 0) & ~finite.all()
                first_bad = torch.where(newly_bad, i, first_bad)
                bad_terms = torch.where(newly_bad, ~finite, bad_terms)
                window += values
                self.global_step += 1
                window_steps += 1
                bar.update(1)
                if window_steps == cfg.log_interval or i + 1 == self.steps_per_epoch:
                    means = self._check_window(epoch, window, window_steps, first_bad, bad_terms)
                    seen += window_steps
                    for k in TERMS:
                        totals[k] += means[k] * window_steps
                    now = time.perf_counter()
                    record = {
                        "event": "step",
                        "epoch": epoch,
                        "step": i + 1,
                        "global_step": self.global_step,
                        "lr": self.step_lr,
                        **means,
                        "img_per_s": window_steps * images_per_step / max(now - t_window, 1e-9),
                    }
                    self._log(record)
                    bar.set_postfix(loss=f"{means['loss']:.4g}", lr=f"{record['lr']:.3g}")
                    window.zero_()
                    window_steps, t_window = 0, now
        finally:
            bar.close()
        elapsed = time.perf_counter() - t_epoch
        return {
            **{k: totals[k] / max(seen, 1) for k in TERMS},
            "lr": self.step_lr,
            "img_per_s": seen * images_per_step / max(elapsed, 1e-9),
            "train_time_s": elapsed,
        }

    def _check_window(
        self, epoch: int, window: Tensor, steps: int, first_bad: Tensor, bad_terms: Tensor
    ) -> dict[str, float]:
        """Mean loss terms of the window over all processes; raises :class:`NonFiniteLossError` (on every
        process alike) when a term was NaN/inf at some step of this epoch."""
        bad_step = torch.where(first_bad < 0, torch.full_like(first_bad, 2**62), first_bad)
        all_reduce(window)
        all_reduce(bad_step, "min")
        flags = all_reduce(bad_terms.to(torch.int32), "max")
        means = (window / (steps * self.dist.world_size)).tolist()
        bad = int(bad_step.item())
        if bad < 2**62:
            which = [k for k, f in zip(TERMS, flags.tolist()) if f and k != "loss"] or ["loss"]
            global_step = epoch * self.steps_per_epoch + bad
            last = self.out / "last.pt"
            kept = (
                f"the last good checkpoint {last} (written after epoch {self._epochs_done - 1}) is kept"
                if self._epochs_done > 0 and last.exists()
                else "no checkpoint had been written yet"
            )
            message = (
                f"non-finite loss at epoch {epoch}, step {bad} (0-based; global step {global_step}): "
                f"term(s) {', '.join(which)} became NaN or infinite; training stopped and {kept}. "
                "Lower the learning rate (--lr), clip gradients (--clip-grad), or train in bf16/fp32."
            )
            self._log({"event": "nonfinite", "epoch": epoch, "step": bad, "global_step": global_step, "terms": which})
            raise NonFiniteLossError(message)
        return dict(zip(TERMS, means))

    # -- evaluation and checkpoints --------------------------------------------------------------------
    def _validate(self) -> dict[str, dict[str, Any]] | None:
        if self.val_loader is None:
            return None
        n = len(self.val_set)
        names = list(self.val_set.label_names)
        results = {}
        for tag, net in (("raw", self.model), ("ema", self.ema.module)):
            scores, targets = dataset_scores(
                net, self.val_loader, device=self.device, amp_dtype=self.amp_dtype, channels_last=self.channels_last
            )
            scores, targets = gather_strided(scores, n), gather_strided(targets, n)
            # Dataset warnings (e.g. classes without positives) once per run, from rank 0.
            results[tag] = score_metrics(
                scores,
                targets,
                self.val_order,
                names,
                self.config.threshold,
                quiet=not self.is_main or self._metrics_warned,
            )
            self._metrics_warned = True
        return results

    def _save_checkpoint(self, epoch: int) -> None:
        """Every process contributes its bank and RNG state; rank 0 writes ``last.pt`` atomically."""
        banks = gather_objects(self.bank.bank.detach().cpu() if self.bank is not None else None)
        rngs = gather_objects(rng_state())
        error, self._export_error = self._export_error, None
        if self.is_main and error is None:
            ckpt = {
                "format": CHECKPOINT_FORMAT,
                "epoch": epoch + 1,
                "global_step": self.global_step,
                "world_size": self.dist.world_size,
                "config": self.config.to_dict(),
                "model_config": dict(self.model.config),
                "model": self.model.state_dict(),
                "weights_header": header_for(self.model).to_json(),
                "ema": self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
                "banks": banks if self.bank is not None else [],
                "rng": rngs,
                "tracker": self.tracker.state_dict(),
                "history": self.history,
            }
            try:
                atomic_torch_save(ckpt, self.out / "last.pt")
            except Exception as e:  # tell the other processes before raising, so none waits forever
                error = f"could not write {self.out / 'last.pt'}: {type(e).__name__}: {e}"
        error = broadcast_object(error)
        if error is not None:
            raise RuntimeError(error)

    def _export_best(self, net: nn.Module, epoch: int, source: str, metrics: Mapping[str, Any] | None) -> None:
        if not self.is_main:
            return
        info = {"epoch": epoch, "source": source, "objective": self.config.objective}
        if metrics is not None:
            info.update({k: metrics.get(k) for k in ("mAP", "CF1", "OF1")}, num_images=metrics.get("num_images"))
        try:
            export_weights(net, self.out / "best.safetensors", training=info)
        except Exception as e:  # reported to every process by the checkpoint step that follows
            self._export_error = f"could not write {self.out / 'best.safetensors'}: {type(e).__name__}: {e}"

    # -- the run ----------------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train from the current epoch to ``epochs`` (or early stop / ``stop_after_epochs``); returns a summary."""
        cfg = self.config
        stopped_early = False
        self._log(
            {
                "event": "start",
                "epoch": self.start_epoch,
                "world_size": self.dist.world_size,
                "device": str(self.device),
                "objective": cfg.objective,
                "train_images": len(self.train_set),
                "val_images": len(self.val_set) if self.val_set else 0,
                "steps_per_epoch": self.steps_per_epoch,
                "trainable_params": sum(p.numel() for p in self.params),
                "resumed": cfg.resume is not None,
            }
        )
        try:
            for epoch in range(self.start_epoch, cfg.epochs):
                stats = self._train_one_epoch(epoch)
                val = self._validate()
                record: dict[str, Any] = {"event": "epoch", "epoch": epoch, "global_step": self.global_step, **stats}
                if val is not None:
                    raw, ema = val["raw"]["mAP"], val["ema"]["mAP"]
                    source = self.tracker.update(epoch, raw, ema)
                    if source is not None:
                        self._export_best(
                            self.ema.module if source == "ema" else self.model, epoch, source, val[source]
                        )
                    record["val"] = {tag: {k: m[k] for k in LOGGED_METRICS} for tag, m in val.items()}
                else:  # nothing to select with: publish the latest EMA weights
                    self._export_best(self.ema.module, epoch, "ema (latest; no validation data)", None)
                record["best"] = {
                    "mAP": self.tracker.best if val is not None else None,
                    "epoch": self.tracker.best_epoch,
                    "source": self.tracker.best_source,
                }
                self.history.append(record)
                self._save_checkpoint(epoch)
                self._epochs_done = epoch + 1
                self._log(record)
                if self.on_epoch is not None and self.is_main:
                    self.on_epoch(record)
                if val is not None and self.tracker.should_stop(epoch, val["ema"]["mAP"]):
                    stopped_early = True
                    self._log(
                        {
                            "event": "early_stop",
                            "epoch": epoch,
                            "best_epoch": self.tracker.best_epoch,
                            "patience": cfg.patience,
                        }
                    )
                    break
                if cfg.stop_after_epochs is not None and epoch + 1 - self.start_epoch >= cfg.stop_after_epochs:
                    break
        finally:
            cleanup_distributed(self.dist)
        best, best_path = None, self.out / "best.safetensors"
        if self.tracker.best_epoch >= 0:
            best = {"mAP": self.tracker.best, "epoch": self.tracker.best_epoch, "source": self.tracker.best_source}
        summary = {
            "rank": self.dist.rank,
            "output_dir": str(self.out),
            "epochs_completed": self._epochs_done,
            "epochs": cfg.epochs,
            "stopped_early": stopped_early,
            "best": best,
            "checkpoint": str(self.out / "last.pt"),
            "best_weights": str(best_path) if best_path.exists() else None,
            "history": self.history,
        }
        self._log({"event": "end", **{k: v for k, v in summary.items() if k not in ("history", "rank")}})
        return summary


def train(config: TrainConfig, **kwargs: Any) -> dict[str, Any]:
    """Run :class:`Trainer` ``(config, **kwargs).fit()`` and return its summary (best metrics, paths, history)."""
    return Trainer(config, **kwargs).fit()
