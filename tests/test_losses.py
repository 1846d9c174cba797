"""Losses against independent dense float64 re-derivations written from REFERENCE c.1-c.3 (values and gradients)."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

from sadcl.train.losses import AsymmetricLoss, PrototypeContrastiveLoss, SADCLCriterion, SampleContrastiveLoss

DT = torch.float64


# ----------------------------------------------------------------------------------------------- references
def dense_official_supcon(features, targets, tau=0.2, eps=1e-5):
    """The authors' MultiSupConLoss procedure (REFERENCE c.2 steps 1-7, quirks 1-2) on the full (VBC)² matrices."""
    B, V, C, D = features.shape
    y = targets.to(DT)
    z = features / features.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    N = V * B
    z_rows = z.transpose(0, 1).reshape(N, C, D)  # view-major: row a = v·B + i
    y_rows = y.repeat(V, 1)  # ỹ[a] = y[a mod B]
    NC = N * C
    Z, yt = z_rows.reshape(NC, D), y_rows.reshape(NC)
    S = Z @ Z.t() / tau
    label = yt[:, None] * yt[None, :]
    off_diag = 1.0 - torch.eye(NC, dtype=DT)
    cls = torch.arange(C).repeat(N)
    same_cls = (cls[:, None] == cls[None, :]).to(DT)
    mask_a = label * off_diag
    mask_p = mask_a * same_cls
    Sd = S.detach()
    m_a = (Sd * mask_a).max(1).values  # masked entries are 0
    same_cls_sim = Sd.reshape(N, C, N, C).diagonal(dim1=1, dim2=3)  # [N, N, C]: s(a,c; b,c)
    m_p = (y_rows[:, None, :] * y_rows[None, :, :] * same_cls_sim).max(-1).values  # [N, N], max over classes
    row = torch.arange(NC) // C
    m_p = m_p[row[:, None], row[None, :]]
    omega = y.repeat_interleave(V, 0).reshape(NC)  # quirk 1: y[a // V, c]
    sum_a = (torch.exp(S - m_a[:, None]) * mask_a).sum(1)
    sum_a = torch.where(sum_a == 0, torch.ones_like(sum_a), sum_a)
    lam = omega * torch.log(sum_a + eps)
    n_p = mask_p.sum(1)
    loss = -(1.0 / n_p.clamp(min=1)) * ((S - m_p - lam[:, None]) * mask_p).sum(1)
    if y.sum() == 0:
        return features.sum() * 0.0
    return (omega * loss).sum() / (V * y.sum())


def loop_fixed_supcon(features, targets, tau=0.2):
    """The defect-free formula, one anchor at a time."""
    B, V, C, _ = features.shape
    z = F.normalize(features, dim=-1)
    pos = [(v, i, c) for v in range(V) for i in range(B) for c in range(C) if targets[i, c] > 0.5]
    total = features.sum() * 0.0
    for k, (v, i, c) in enumerate(pos):
        others = [j for j in range(len(pos)) if j != k]
        p_set = [j for j in others if pos[j][2] == c]
        if not p_set:
            continue
        s = {j: (z[i, v, c] * z[pos[j][1], pos[j][0], pos[j][2]]).sum() / tau for j in others}
        lse = torch.logsumexp(torch.stack([s[j] for j in others]), 0)
        total = total - torch.stack([s[j] - lse for j in p_set]).mean()
    return total / max(len(pos), 1)


def dense_sem2pro(emb, protos, targets, tau=0.07):
    """Semantic2PrototypeConLoss (REFERENCE c.3) class by class."""
    if protos.dim() == 2:
        protos = protos[None]
    s = F.cosine_similarity(emb, protos, dim=-1, eps=1e-8) / tau
    s = s - s.max(0, keepdim=True).values.detach()
    y = targets.to(DT)
    total = emb.sum() * 0.0
    for c in range(emb.shape[1]):
        pos_c = torch.log((torch.exp(s[:, c]) * y[:, c]).sum()) if y[:, c].sum() > 0 else 0.0
        total = total + pos_c - torch.log(torch.exp(s[:, c]).sum())
    return -total / y.sum()


def asl_reference(x, y, gamma_neg, gamma_pos, clip, eps, grad_through_weight=False):
    p = torch.sigmoid(x)
    q = 1 - p
    if clip > 0:
        q = (q + clip).clamp(max=1)
    loss = y * torch.log(p.clamp(min=eps)) + (1 - y) * torch.log(q.clamp(min=eps))
    if gamma_neg > 0 or gamma_pos > 0:
        pw, qw = (p, q) if grad_through_weight else (p.detach(), q.detach())
        loss = loss * (1 - pw * y - qw * (1 - y)) ** (gamma_pos * y + gamma_neg * (1 - y))
    return -1000 * loss.sum() / (x.shape[0] * x.shape[1])


def value_and_grad(fn, *inputs):
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    value = fn(*inputs)
    grads = torch.autograd.grad(value, inputs, allow_unused=True)
    return value.detach(), [g if g is not None else torch.zeros_like(t) for g, t in zip(grads, inputs)]


def assert_same(fn_a, fn_b, *inputs, tol=1e-10):
    va, ga = value_and_grad(fn_a, *inputs)
    vb, gb = value_and_grad(fn_b, *inputs)
    torch.testing.assert_close(va, vb.to(va.dtype), rtol=tol, atol=tol)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


# ----------------------------------------------------------------------------------------------- cases
def random_cases(n=10):
    g = torch.Generator().manual_seed(0)
    for _ in range(n):
        B, V, C, D = (int(torch.randint(lo, hi, (1,), generator=g)) for lo, hi in ((1, 6), (1, 4), (1, 7), (2, 7)))
        density = float(torch.rand(1, generator=g)) * 0.8 + 0.1
        yield torch.randn(B, V, C, D, generator=g, dtype=DT), (torch.rand(B, C, generator=g) < density).to(DT)


def edge_cases():
    g = torch.Generator().manual_seed(1)
    f = torch.randn(3, 2, 4, 5, generator=g, dtype=DT)
    single = torch.zeros(3, 4, dtype=DT)
    single[1, 2] = 1
    absent = torch.tensor([[1, 0, 1, 0], [1, 1, 0, 0], [0, 1, 1, 0]], dtype=DT)  # class 3 absent
    return {
        "no_positives": (f, torch.zeros(3, 4, dtype=DT)),
        "all_positives": (f, torch.ones(3, 4, dtype=DT)),  # jointly positive in all classes: m_P unclamped
        "single_positive": (f, single),
        "absent_class": (f, absent),
        "one_sample": (f[:1], torch.tensor([[1, 1, 0, 1]], dtype=DT)),
        "one_sample_one_view": (f[:1, :1], torch.tensor([[1, 0, 1, 1]], dtype=DT)),
    }


CASES = list(random_cases()) + list(edge_cases().values())
IDS = [f"random{i}" for i in range(10)] + list(edge_cases())


@pytest.mark.parametrize("features,targets", CASES, ids=IDS)
def test_official_sample_loss_matches_dense_authors_procedure(features, targets):
    loss = SampleContrastiveLoss(official=True)
    assert_same(lambda f: loss(f, targets), lambda f: dense_official_supcon(f, targets), features)


@pytest.mark.parametrize("features,targets", CASES, ids=IDS)
def test_fixed_sample_loss_matches_anchor_loop(features, targets):
    loss = SampleContrastiveLoss(official=False)
    assert_same(lambda f: loss(f, targets), lambda f: loop_fixed_supcon(f, targets), features)


def test_sample_loss_edge_values():
    cases = edge_cases()
    for official in (False, True):
        loss = SampleContrastiveLoss(official=official)
        f, y = cases["no_positives"]
        assert loss(f, y).item() == 0.0
        # One positive: its two views are each other's only contrast, so -log(1) = 0 for the fixed
        # formula; the authors' weight ω is 0 on both rows (quirk 1), so their loss is exactly 0 as well.
        f, y = cases["single_positive"]
        assert loss(f, y).item() == pytest.approx(0.0, abs=1e-12)


def test_official_and_fixed_differ():
    f = torch.randn(3, 2, 3, 4, dtype=DT, generator=torch.Generator().manual_seed(10))
    y = torch.tensor([[1, 0, 1], [1, 1, 0], [0, 1, 1]], dtype=DT)
    official, fixed = SampleContrastiveLoss(official=True)(f, y), SampleContrastiveLoss()(f, y)
    assert official.item() > 0 and fixed.item() > 0
    assert not torch.allclose(official, fixed)


def test_sample_loss_target_dtypes_and_autocast():
    g = torch.Generator().manual_seed(2)
    f = torch.randn(4, 2, 6, 8, generator=g)
    y = torch.rand(4, 6, generator=g) < 0.4
    for official in (False, True):
        loss = SampleContrastiveLoss(official=official)
        ref = loss(f, y)
        assert ref.dtype == torch.float32
        for t in (y.double(), y.float(), y.long(), y.int()):
            out = loss(f, t)
            assert out.dtype == torch.float32  # float64 targets never promote the float32 features
            torch.testing.assert_close(out, ref)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = loss(f, y.double())
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, ref)
        out = loss(f.bfloat16(), y)  # low-precision features are computed in float32
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)


def test_sample_loss_rejects_bad_shapes():
    with pytest.raises(ValueError, match="features must be"):
        SampleContrastiveLoss()(torch.randn(2, 3, 4), torch.ones(2, 3))
    with pytest.raises(ValueError, match="targets must have shape"):
        SampleContrastiveLoss()(torch.randn(2, 2, 3, 4), torch.ones(2, 4))


@pytest.mark.parametrize("official", [False, True])
def test_sample_loss_vg500_scale_smoke(official):
    g = torch.Generator().manual_seed(3)
    B, C, D = 64, 500, 64
    y = torch.zeros(B, C)
    y[torch.arange(B).repeat_interleave(5), torch.randint(0, C, (B * 5,), generator=g)] = 1  # ~5 per image
    f = torch.randn(B, 2, C, D, generator=g, requires_grad=True)
    start = time.perf_counter()
    loss = SampleContrastiveLoss(official=official)(f, y)
    loss.backward()
    elapsed = time.perf_counter() - start
    assert torch.isfinite(loss) and loss.item() > 0
    assert torch.isfinite(f.grad).all() and f.grad.abs().sum() > 0
    assert elapsed < 10.0, f"K×K formulation took {elapsed:.1f}s at VG-500 scale"


# ----------------------------------------------------------------------------------------------- ASL
def test_asl_gamma0_is_1000_times_clamped_bce():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(6, 9, generator=g, dtype=DT) * 3
    x[0, 0], x[1, 1] = 40.0, -40.0  # saturated: the 1e-5 clamp is active here
    y = (torch.rand(6, 9, generator=g) < 0.3).to(DT)
    y[0, 0], y[1, 1] = 0, 1
    asl = AsymmetricLoss(gamma_neg=0, gamma_pos=0)
    clamped = -(
        y * torch.log(torch.sigmoid(x).clamp(min=1e-5)) + (1 - y) * torch.log((1 - torch.sigmoid(x)).clamp(min=1e-5))
    ).mean()
    torch.testing.assert_close(asl(x, y), 1000 * clamped, rtol=1e-12, atol=1e-12)
    xm = x.clone()
    xm[0, 0] = xm[1, 1] = 0.0  # without saturation it is plain BCE
    torch.testing.assert_close(asl(xm, y), 1000 * F.binary_cross_entropy_with_logits(xm, y), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("gamma_neg,gamma_pos,clip", [(4, 0, 0), (4, 1, 0.05), (0, 0, 0.05), (2, 3, 0)])
def test_asl_matches_reference_values_and_grads(gamma_neg, gamma_pos, clip):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(5, 7, generator=g, dtype=DT) * 2
    y = (torch.rand(5, 7, generator=g) < 0.4).to(DT)
    asl = AsymmetricLoss(gamma_neg, gamma_pos, clip)
    assert_same(lambda t: asl(t, y), lambda t: asl_reference(t, y, gamma_neg, gamma_pos, clip, 1e-5), x)


def test_asl_focal_weight_has_no_gradient():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(4, 5, generator=g, dtype=DT)
    y = (torch.rand(4, 5, generator=g) < 0.5).to(DT)
    _, (grad,) = value_and_grad(lambda t: AsymmetricLoss(4, 1)(t, y), x)
    _, (with_weight_grad,) = value_and_grad(lambda t: asl_reference(t, y, 4, 1, 0, 1e-5, True), x)
    assert not torch.allclose(grad, with_weight_grad)  # the detached weight does change the gradient


def test_asl_targets_dtypes_autocast_and_no_stored_tensors():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(3, 4, generator=g)
    y = torch.rand(3, 4, generator=g) < 0.5
    asl = AsymmetricLoss()
    ref = asl(x, y)
    for t in (y.double(), y.long(), y.float()):
        assert asl(x, t).dtype == torch.float32
        torch.testing.assert_close(asl(x, t), ref)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(asl(x, y), ref)
    assert not any(isinstance(v, torch.Tensor) for v in vars(asl).values())
    assert not list(asl.buffers())
    with pytest.raises(ValueError, match="targets must have shape"):
        asl(x, y[:, :3])


# ----------------------------------------------------------------------------------------------- PSCL
def prototype_cases():
    g = torch.Generator().manual_seed(8)
    e, p = torch.randn(5, 4, 6, generator=g, dtype=DT), torch.randn(4, 6, generator=g, dtype=DT)
    random_y = (torch.rand(5, 4, generator=g) < 0.5).to(DT)
    random_y[:, 3] = 0  # an absent class
    single = torch.zeros(5, 4, dtype=DT)
    single[2, 1] = 1
    return [(e, p, random_y), (e, p, torch.ones(5, 4, dtype=DT)), (e, p, single), (e[:1], p, random_y[:1] + 0)]


@pytest.mark.parametrize("case", range(4), ids=["random_absent_class", "all_positive", "single", "one_sample"])
def test_prototype_loss_matches_authors(case):
    e, p, y = prototype_cases()[case]
    if y.sum() == 0:
        y[0, 0] = 1
    loss = PrototypeContrastiveLoss()
    assert_same(lambda a, b: loss(a, b, y), lambda a, b: dense_sem2pro(a, b, y), e, p)
    assert loss(e, p, y).item() >= 0


def test_prototype_loss_accepts_both_prototype_layouts_and_no_positives():
    e, p, y = prototype_cases()[0]
    loss = PrototypeContrastiveLoss()
    torch.testing.assert_close(loss(e, p, y), loss(e, p[None], y), rtol=0, atol=0)
    value, (ge, gp) = value_and_grad(lambda a, b: loss(a, b, torch.zeros_like(y)), e, p)
    assert value.item() == 0.0 and ge.abs().sum() == 0 and gp.abs().sum() == 0
    with pytest.raises(ValueError, match="prototypes must be"):
        loss(e, p[:2], y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss(e.float(), p.float(), y)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), loss(e, p, y), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------- criterion
def criterion_inputs():
    g = torch.Generator().manual_seed(9)
    B, C, P = 4, 5, 6
    return (
        torch.randn(B, C, generator=g),
        (torch.rand(B, C, generator=g) < 0.5).double(),
        torch.randn(B, C, P, generator=g),
        torch.randn(B, C, P, generator=g),
        torch.randn(C, P, generator=g),
    )


def test_criterion_weighted_sum_and_terms():
    logits, y, e, bank, protos = criterion_inputs()
    crit = SADCLCriterion()
    out = crit(logits, y, e, bank, protos)
    asl = AsymmetricLoss()(logits, y)
    sample = SampleContrastiveLoss()(torch.stack([e, bank], 1), y)
    proto = PrototypeContrastiveLoss()(e, protos, y)
    assert set(out) == {"asl", "sample", "prototype", "loss"}
    for key, ref in (("asl", asl), ("sample", sample), ("prototype", proto)):
        torch.testing.assert_close(out[key], ref)
    torch.testing.assert_close(out["loss"], asl + 100 * sample + 50 * proto)
    custom = SADCLCriterion(AsymmetricLoss(gamma_neg=0), SampleContrastiveLoss(official=True), weights=(2, 3, 4))
    out = custom(logits, y, e, bank, protos)
    ref = (
        2 * AsymmetricLoss(gamma_neg=0)(logits, y)
        + 3 * SampleContrastiveLoss(official=True)(torch.stack([e, bank], 1), y)
        + 4 * proto
    )
    torch.testing.assert_close(out["loss"], ref)


def test_criterion_skips_terms_without_weight_or_inputs():
    logits, y, e, bank, protos = criterion_inputs()
    out = SADCLCriterion()(logits, y)  # the Query2Label baseline
    assert set(out) == {"asl", "loss"}
    torch.testing.assert_close(out["loss"], out["asl"])
    assert set(SADCLCriterion()(logits, y, e, None, protos)) == {"asl", "prototype", "loss"}
    assert set(SADCLCriterion()(logits, y, e, bank)) == {"asl", "sample", "loss"}
    out = SADCLCriterion(weights=(1, 0, 50))(logits, y, e, bank, protos)
    assert set(out) == {"asl", "prototype", "loss"}
    out = SADCLCriterion(weights=(0, 100, 0))(logits, y, e, bank, protos)
    assert set(out) == {"sample", "loss"}
    torch.testing.assert_close(out["loss"], 100 * out["sample"])
    with pytest.raises(ValueError, match="no loss term"):
        SADCLCriterion(weights=(0, 1, 1))(logits, y)
    with pytest.raises(ValueError, match="bank_embeddings"):
        SADCLCriterion()(logits, y, e, bank[:2], protos)
    with pytest.raises(ValueError, match="weights"):
        SADCLCriterion(weights=(1, 2))
