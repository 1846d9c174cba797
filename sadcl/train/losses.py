"""The SADCL training objective: asymmetric loss + sample-to-sample (SSCL) + prototype-to-sample (PSCL) terms.

``L = ASL(logits, y) + 100 · SSCL([h, bank], y) + 50 · PSCL(h, prototypes, y)`` (the recipe's weights).

Everything here works on tensors only (it never imports the model) and computes in at least float32 with
autocast disabled, so fp16/bf16 activations from an AMP forward give the same values as a float32 run.
Targets may be bool, integer or floating point; a label counts as *positive* when it is True / > 0.5
(0/1 labels; a -1 "ignore" label is not a positive). Boolean masks are built once from the targets, so
float64 dataset labels never turn float32 features into float64 arithmetic.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["AsymmetricLoss", "PrototypeContrastiveLoss", "SADCLCriterion", "SampleContrastiveLoss"]


def _positive_mask(targets: Tensor) -> Tensor:
    """Binary positives of a label tensor of any dtype (True / > 0.5)."""
    return targets if targets.dtype == torch.bool else targets > 0.5


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    """At least float32 (fp16/bf16 inputs are upcast); float64 stays float64 (used by the parity tests)."""
    dtype = torch.float32
    for t in tensors:
        if t.is_floating_point():
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


@contextlib.contextmanager
def _autocast_off(device_type: str) -> Iterator[None]:
    """Disable autocast (if active) so the Gram matrices and log-sum-exps run in the compute dtype."""
    if torch.is_autocast_enabled(device_type):
        with torch.autocast(device_type=device_type, enabled=False):
            yield
    else:
        yield


def _clamped_norm(x: Tensor, keepdim: bool = False, eps: float = 1e-8) -> Tensor:
    """L2 norm over the last dim, clamped at ``eps`` in the forward only (as ``F.cosine_similarity``)."""
    n = torch.linalg.vector_norm(x, dim=-1, keepdim=keepdim)
    return n + (n.clamp(min=eps) - n).detach()


def _check_targets(targets: Tensor, shape: Sequence[int], what: str) -> None:
    if tuple(targets.shape) != tuple(shape):
        raise ValueError(
            f"{what}: targets must have shape [B, C] = {list(shape)} to match the inputs, got {list(targets.shape)}"
        )


def as_class_matrix(prototypes: Tensor, num_classes: int, dim: int, what: str) -> Tensor:
    """Accept ``[C, D]`` or the authors' ``[1, C, D]`` and return ``[C, D]``."""
    if prototypes.dim() == 3 and prototypes.shape[0] == 1:
        prototypes = prototypes[0]
    if tuple(prototypes.shape) != (num_classes, dim):
        raise ValueError(
            f"{what}: prototypes must be [C, D] or [1, C, D] with C={num_classes}, D={dim}, "
            f"got {list(prototypes.shape)}"
        )
    return prototypes


class AsymmetricLoss(nn.Module):
    """Asymmetric loss (ASL, Ridnik et al. 2021) as used by Query2Label and SADCL.

    With ``p = σ(x)``, ``q = 1 − p`` (``q ← min(q + clip, 1)`` when ``clip > 0``):
    ``ℓ = y·log(max(p, ε)) + (1 − y)·log(max(q, ε))``, multiplied by the focal weight
    ``(1 − p·y − q·(1 − y))^(γ+·y + γ−·(1 − y))`` computed without gradient; the loss is
    ``−1000 × mean(ℓ)`` over the ``B × C`` entries (the authors' scale).
    """

    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 0.0, clip: float = 0.0, eps: float = 1e-5) -> None:
        super().__init__()
        if gamma_neg < 0 or gamma_pos < 0 or clip < 0 or eps <= 0:
            raise ValueError(
                f"AsymmetricLoss: need gamma_neg, gamma_pos, clip >= 0 and eps > 0, "
                f"got gamma_neg={gamma_neg}, gamma_pos={gamma_pos}, clip={clip}, eps={eps}"
            )
        self.gamma_neg = float(gamma_neg)
        self.gamma_pos = float(gamma_pos)
        self.clip = float(clip)
        self.eps = float(eps)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        if logits.dim() != 2:
            raise ValueError(f"AsymmetricLoss: logits must be [B, C], got shape {list(logits.shape)}")
        _check_targets(targets, logits.shape, "AsymmetricLoss")
        with _autocast_off(logits.device.type):
            x = logits.to(_compute_dtype(logits))
            # Soft labels are meaningful for ASL, so the targets stay numeric (bool → 0/1).
            y = targets.to(x.dtype)
            p = torch.sigmoid(x)
            q = 1.0 - p
            if self.clip > 0:
                q = (q + self.clip).clamp(max=1.0)
            loss = y * torch.log(p.clamp(min=self.eps)) + (1.0 - y) * torch.log(q.clamp(min=self.eps))
            if self.gamma_neg > 0 or self.gamma_pos > 0:
                # The authors' `disable_torch_grad_focal_loss`: the weight rescales, it is not differentiated.
                with torch.no_grad():
                    base = 1.0 - p * y - q * (1.0 - y)
                    w = torch.pow(base, self.gamma_pos * y + self.gamma_neg * (1.0 - y))
                loss = loss * w
            return -1000.0 * loss.mean()

    def extra_repr(self) -> str:
        return f"gamma_neg={self.gamma_neg}, gamma_pos={self.gamma_pos}, clip={self.clip}, eps={self.eps}"


class SampleContrastiveLoss(nn.Module):
    """Sample-to-sample supervised contrastive loss over label-level embeddings (SSCL, the authors' MultiSupCon).

    ``features [B, V, C, D]``: view ``v`` of sample ``i``'s class-``c`` embedding; every view of sample ``i``
    has sample ``i``'s labels ``targets [B, C]``. Only *positive* label embeddings (view, sample, class with
    label 1) take part: anchors, positives and contrast set are all drawn from the ``K = V·Σy`` positive
    embeddings, so the work is one ``K × K`` Gram matrix instead of the authors' ``(V·B·C)²`` one
    (exactly equivalent, REFERENCE c.2). Gathering the positives is one boolean-mask gather (a host sync).

    ``official=False`` (default), with ``s = z·z'/τ`` on L2-normalised embeddings and anchor ``k``:
    ``P(k)`` = other positive embeddings of the same class (any sample, any view), ``A(k)`` = all other
    positive embeddings, ``l_k = −mean_{p∈P(k)} [s_kp − logsumexp_{a∈A(k)} s_ka]`` (0 if ``P(k)`` is empty),
    ``loss = Σ_k l_k / K`` (0 if ``K = 0``).

    ``official=True`` reproduces the authors' values and gradients: anchors weighted by the mis-laid-out
    label mask ``ω = y[⌊a/V⌋, c]`` for view-major row ``a = v·B + i`` (quirk 1), the denominator shifted
    by the detached ``max(0, max_A s)`` and the numerator by the detached per-sample-pair class max ``m_P``
    (quirk 2), and ``ε = 1e-5`` inside ``log(Σ_A exp(s − m_A) + ε)``. ``τ/τ_base = 1`` as in the recipe.
    """

    def __init__(self, temperature: float = 0.2, official: bool = False, eps: float = 1e-5) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"SampleContrastiveLoss: temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.official = bool(official)
        self.eps = float(eps)  # only used by the official formula

    def forward(self, features: Tensor, targets: Tensor) -> Tensor:
        if features.dim() != 4:
            raise ValueError(
                f"SampleContrastiveLoss: features must be [B, V, C, D] (views stacked on dim 1, e.g. "
                f"torch.stack([embeddings, bank_embeddings], 1)), got shape {list(features.shape)}"
            )
        B, V, C, _ = features.shape
        _check_targets(targets, (B, C), "SampleContrastiveLoss")
        with _autocast_off(features.device.type):
            device = features.device
            # Positives in (sample, class) order; nonzero is the one host sync of this loss.
            sample, cls = _positive_mask(targets).to(device).nonzero(as_tuple=True)
            view = torch.arange(V, device=device).repeat_interleave(sample.numel())
            sample, cls = sample.repeat(V), cls.repeat(V)  # view-major, like the authors' row a = v·B + i
            # Gather first: casting and normalising only the K positives (not all V·B·C rows) is the same
            # per-row arithmetic and most of the saving at VG-500 scale.
            emb = F.normalize(features[sample, view, cls].to(_compute_dtype(features)), dim=-1)  # [K, D]
            K = emb.shape[0]
            if K == 0:
                return emb.sum() * 0.0  # graph-connected zero: backward and DDP still see the inputs
            sim = emb @ emb.t() / self.temperature  # [K, K]
            eye = torch.eye(K, dtype=torch.bool, device=device)
            pos_pair = (cls[:, None] == cls[None, :]) & ~eye
            n_pos = pos_pair.sum(1).to(sim.dtype)
            if self.official:
                per_anchor = self._official_terms(sim, eye, pos_pair, n_pos, sample, view, cls, targets, B, V, C)
            else:
                # finfo.min (not -inf) keeps the K = 1 row finite, so its zeroed gradient is not NaN.
                lse = torch.logsumexp(sim.masked_fill(eye, torch.finfo(sim.dtype).min), dim=1)
                mean_pos = torch.where(pos_pair, sim, 0.0).sum(1) / n_pos.clamp(min=1)
                per_anchor = torch.where(n_pos > 0, lse - mean_pos, 0.0)
            return per_anchor.sum() / K

    def _official_terms(
        self,
        sim: Tensor,
        eye: Tensor,
        pos_pair: Tensor,
        n_pos: Tensor,
        sample: Tensor,
        view: Tensor,
        cls: Tensor,
        targets: Tensor,
        B: int,
        V: int,
        C: int,
    ) -> Tensor:
        """``ω_k · ℓ_k`` of the authors' procedure restricted to the K positive rows (REFERENCE c.2)."""
        s = sim.detach()
        # Denominator shift: row max over the contrast set with the masked entries (here: the diagonal,
        # the only non-positive in the K rows) at 0, so it is never below 0.
        m_a = s.masked_fill(eye, 0.0).amax(1)
        # Numerator shift: for the sample-view pair (a, b), the max over classes jointly positive in both
        # of their same-class similarities; the zeros of the non-joint classes clamp it at 0 unless the two
        # samples are jointly positive in all C classes.
        rows = view * B + sample  # authors' row index a
        n_rows = V * B
        pair = rows[:, None] * n_rows + rows[None, :]
        same_cls = cls[:, None] == cls[None, :]
        raw = torch.full((n_rows * n_rows,), float("-inf"), dtype=s.dtype, device=s.device)
        raw = raw.scatter_reduce(0, pair.flatten(), s.masked_fill(~same_cls, float("-inf")).flatten(), "amax")
        m_p = raw[pair]
        pos = _positive_mask(targets).to(s.device)
        joint = pos.to(s.dtype) @ pos.to(s.dtype).t()  # [B, B] number of jointly positive classes
        all_joint = (joint == C)[sample[:, None], sample[None, :]]
        m_p = torch.where(all_joint, m_p, m_p.clamp(min=0.0))
        # ε sits inside the log of the shifted sum; exp of a -inf fill gives exact zeros (and zero gradients).
        denom = torch.exp((sim - m_a[:, None]).masked_fill(eye, float("-inf"))).sum(1)
        log_denom = torch.log(denom + self.eps)
        num = torch.where(pos_pair, sim - m_p, 0.0).sum(1)
        loss = -(num - n_pos * log_denom) / n_pos.clamp(min=1)
        # Quirk 1: the anchor weight is the label mask laid out sample-major, y[a // V, c].
        omega = pos[torch.div(rows, V, rounding_mode="floor"), cls].to(loss.dtype)
        return omega * loss

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, official={self.official}"


class PrototypeContrastiveLoss(nn.Module):
    """Prototype-to-sample contrastive loss (PSCL, the authors' Semantic2PrototypeConLoss).

    ``s_ic = cos(e_ic, p_c) / τ``; per class ``c`` the prototype's positives are the batch samples labelled
    ``c`` and its negatives the other samples: ``loss = Σ_c [logsumexp_i s_ic − logsumexp_{i: y_ic=1} s_ic]
    / Σ y`` where a class without positive in the batch contributes only its first term (as in the
    authors' code). A batch without any positive gives 0 (the authors' code crashes there).
    """

    def __init__(self, temperature: float = 0.07) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"PrototypeContrastiveLoss: temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, embeddings: Tensor, prototypes: Tensor, targets: Tensor) -> Tensor:
        if embeddings.dim() != 3:
            raise ValueError(f"PrototypeContrastiveLoss: embeddings must be [B, C, D], got {list(embeddings.shape)}")
        B, C, D = embeddings.shape
        prototypes = as_class_matrix(prototypes, C, D, "PrototypeContrastiveLoss")
        _check_targets(targets, (B, C), "PrototypeContrastiveLoss")
        with _autocast_off(embeddings.device.type):
            dtype = _compute_dtype(embeddings, prototypes)
            e, p = embeddings.to(dtype), prototypes.to(dtype)
            # cos(e_ic, p_c) = (e_ic · p̂_c) / ‖e_ic‖: the prototypes are normalised once ([C, D]) and the
            # [B, C, D] embeddings are only read by one product-sum and one norm. F.cosine_similarity
            # broadcasts the prototypes to [B, C, D] and normalises both sides there: ~5x the time and
            # memory of this (benchmarks/bench_losses.py). Norms are clamped at 1e-8 as it does.
            p_hat = p / _clamped_norm(p, keepdim=True)
            s = (e * p_hat).sum(-1) / _clamped_norm(e)
            s = s / self.temperature  # [B, C]
            s = s - s.detach().amax(0, keepdim=True)  # the authors' per-class shift (exact under logsumexp)
            pos = _positive_mask(targets).to(s.device)
            lse_all = torch.logsumexp(s, dim=0)
            # finfo.min keeps classes without positives finite (their term is then zeroed, gradient 0 not NaN).
            lse_pos = torch.logsumexp(s.masked_fill(~pos, torch.finfo(s.dtype).min), dim=0)
            lse_pos = torch.where(pos.any(0), lse_pos, 0.0)
            total = (lse_all - lse_pos).sum()
            n = pos.sum().to(s.dtype)
            return torch.where(n > 0, total / n.clamp(min=1), total * 0.0)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


class SADCLCriterion(nn.Module):
    """The SADCL objective: ``w_asl·ASL + w_sample·SSCL + w_proto·PSCL`` (recipe weights 1, 100, 50).

    A ``None`` loss module means the default-constructed one (note: ``AsymmetricLoss()`` has the scripts'
    ``γ− = 4``; the released SADCL run used ``γ− = 0``). A term is skipped when its weight is 0 or
    its inputs are missing: with only ``logits`` (or weights ``(1, 0, 0)``) this is the Query2Label
    baseline. ``forward`` returns the unweighted terms it computed (``"asl"``, ``"sample"``,
    ``"prototype"``) and their weighted sum ``"loss"``.
    """

    def __init__(
        self,
        asl: AsymmetricLoss | None = None,
        sample: SampleContrastiveLoss | None = None,
        prototype: PrototypeContrastiveLoss | None = None,
        weights: Sequence[float] = (1.0, 100.0, 50.0),
    ) -> None:
        super().__init__()
        if len(weights) != 3 or any(float(w) < 0 for w in weights):
            raise ValueError(
                f"SADCLCriterion: weights must be three non-negative numbers (asl, sample, prototype), got {weights!r}"
            )
        self.asl = asl if asl is not None else AsymmetricLoss()
        self.sample = sample if sample is not None else SampleContrastiveLoss()
        self.prototype = prototype if prototype is not None else PrototypeContrastiveLoss()
        self.weights = tuple(float(w) for w in weights)

    def forward(
        self,
        logits: Tensor,
        targets: Tensor,
        embeddings: Tensor | None = None,
        bank_embeddings: Tensor | None = None,
        prototypes: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """``embeddings``/``bank_embeddings``: projected label embeddings of the batch and of the memory bank
        (the two SSCL views, ``[B, C, P]`` each, same batch positions); ``prototypes``: projected ``[C, P]``."""
        w_asl, w_sample, w_proto = self.weights
        terms: dict[str, Tensor] = {}
        if w_asl > 0:
            terms["asl"] = self.asl(logits, targets)
        if w_sample > 0 and embeddings is not None and bank_embeddings is not None:
            if embeddings.shape != bank_embeddings.shape:
                raise ValueError(
                    f"SADCLCriterion: bank_embeddings {list(bank_embeddings.shape)} must match embeddings "
                    f"{list(embeddings.shape)}: read the memory bank with the batch size (MemoryBank.read(B))"
                )
            terms["sample"] = self.sample(torch.stack([embeddings, bank_embeddings], 1), targets)
        if w_proto > 0 and embeddings is not None and prototypes is not None:
            terms["prototype"] = self.prototype(embeddings, prototypes, targets)
        if not terms:
            raise ValueError(
                f"SADCLCriterion: no loss term to compute with weights {self.weights}; pass embeddings "
                "(and bank_embeddings / prototypes) or give the ASL term a positive weight"
            )
        weight = {"asl": w_asl, "sample": w_sample, "prototype": w_proto}
        terms["loss"] = sum(weight[k] * v for k, v in terms.items())
        return terms

    def extra_repr(self) -> str:
        return f"weights={self.weights}"
