"""Memory bank (against the authors' per-label loop) and prototype initialisation (with a fake SADCL module)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sadcl.train.memory import MemoryBank, compute_prototypes, init_prototypes_


def loop_update(bank: torch.Tensor, h: torch.Tensor, target: torch.Tensor, logits: torch.Tensor, thr: float = 0.8):
    """The authors' update: one label at a time over target.nonzero(), tensor comparison `p > 0.8`."""
    p = torch.sigmoid(logits)
    for b, c in target.nonzero().tolist():
        if p[b, c] > thr:
            bank[b, c] = h[b, c].detach()
    return bank


def random_step(g, B, C, D):
    h = torch.randn(B, C, D, generator=g)
    target = (torch.rand(B, C, generator=g) < 0.5).double()
    logits = torch.randn(B, C, generator=g) * 2
    return h, target, logits


@pytest.mark.parametrize("batch", [4, 3, 1])
def test_update_matches_per_label_loop(batch):
    g = torch.Generator().manual_seed(0)
    C, D = 5, 3
    protos = torch.randn(C, D, generator=g)
    mb = MemoryBank(4, C, D)
    mb.init_from_prototypes(protos)
    ref = protos.expand(4, C, D).clone()
    for _ in range(3):  # successive steps: overwrites accumulate, untouched slots keep older values
        h, target, logits = random_step(g, batch, C, D)
        mb.update(h, target, logits)
        loop_update(ref, h, target, logits)
        assert torch.equal(mb.bank, ref)
    assert not torch.equal(mb.bank, protos.expand(4, C, D))  # something was written
    if batch < 4:
        assert torch.equal(mb.bank[batch:], protos.expand(4 - batch, C, D))  # slots past B untouched


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_threshold_is_strict(dtype):
    # logit(0.8) in float64 maps back to exactly 0.8 in float64 and to float32(0.8) in float32: equality,
    # so the authors' `p > 0.8` (compared in the logits' precision) leaves the slot unchanged.
    x = torch.logit(torch.tensor(0.8, dtype=torch.float64)).to(dtype)
    assert torch.sigmoid(x) == torch.tensor(0.8, dtype=dtype)
    above = x.clone()
    while torch.sigmoid(above) <= 0.8:  # smallest representable logit whose probability exceeds 0.8
        above = torch.nextafter(above, torch.tensor(float("inf"), dtype=dtype))
    logits = torch.stack([x, above])[None].to(dtype)  # [1, 2]
    h = torch.ones(1, 2, 3)
    target = torch.ones(1, 2)
    mb = MemoryBank(2, 2, 3)
    mb.update(h, target, logits)
    assert mb.bank[0, 0].abs().sum() == 0  # exactly 0.8: not updated
    assert torch.equal(mb.bank[0, 1], h[0, 1])  # just above: updated
    ref = loop_update(torch.zeros(2, 2, 3), h, target, logits)
    assert torch.equal(mb.bank, ref)


def test_negative_labels_are_never_written():
    mb = MemoryBank(2, 3, 2)
    logits = torch.full((2, 3), 10.0)
    mb.update(torch.ones(2, 3, 2), torch.zeros(2, 3), logits)
    assert mb.bank.abs().sum() == 0


def test_dtypes_and_devices_of_inputs():
    g = torch.Generator().manual_seed(1)
    h, target, logits = random_step(g, 3, 4, 2)
    ref = MemoryBank(3, 4, 2)
    ref.update(h, target, logits)
    for h_, t_, l_ in [
        (h.double(), target.bool(), logits),
        (h.bfloat16().float(), target.long(), logits.double()),
        (h.half(), target.float(), logits),
    ]:
        mb = MemoryBank(3, 4, 2)
        mb.update(h_, t_, l_)
        assert mb.bank.dtype == torch.float32
        assert torch.equal(mb.bank, loop_update(torch.zeros(3, 4, 2), h_.float(), t_.float(), l_))
    mb = MemoryBank(3, 4, 2)
    mb.update(h, target, logits.half())  # fp16 logits are compared in float32
    mask = (target > 0) & (torch.sigmoid(logits.half().float()) > 0.8)
    assert torch.equal(mb.bank, torch.where(mask[..., None], h, torch.zeros_like(h)))


def test_no_gradient_flows_into_the_bank():
    g = torch.Generator().manual_seed(2)
    C, D = 3, 4
    head = nn.Linear(D, 2)
    mb = MemoryBank(2, C, D)
    mb.init_from_prototypes(torch.randn(1, C, D, generator=g, requires_grad=True))
    h = torch.randn(2, C, D, generator=g, requires_grad=True)
    view2 = mb.read(2)
    assert not view2.requires_grad and not mb.bank.requires_grad
    old = view2.clone()
    loss = head(h).sum() + head(view2).pow(2).sum()
    # The recipe updates after the losses and before backward; the read copy keeps backward valid.
    mb.update(h * 2, torch.ones(2, C), torch.full((2, C), 5.0))
    assert mb.bank.grad_fn is None and not mb.bank.requires_grad
    assert torch.equal(mb.bank, (h * 2).detach())
    loss.backward()
    ref_head = nn.Linear(D, 2)
    ref_head.load_state_dict(head.state_dict())
    (ref_head(h.detach()).sum() + ref_head(old).pow(2).sum()).backward()
    torch.testing.assert_close(head.weight.grad, ref_head.weight.grad)  # gradient used the pre-update bank
    assert mb.bank.grad is None


def test_shapes_state_dict_and_errors():
    mb = MemoryBank(4, 3, 2)
    assert mb.bank.shape == (4, 3, 2) and "bank" in mb.state_dict()
    assert not list(mb.parameters())
    protos = torch.arange(6.0).reshape(3, 2)
    mb.init_from_prototypes(protos[None])
    assert torch.equal(mb.bank, protos.expand(4, 3, 2))
    assert torch.equal(mb.read(3), protos.expand(3, 3, 2))
    other = MemoryBank(4, 3, 2)
    other.load_state_dict(mb.state_dict())
    assert torch.equal(other.bank, mb.bank)
    with pytest.raises(ValueError, match="does not fit the bank's 4 slots"):
        mb.update(torch.zeros(5, 3, 2), torch.zeros(5, 3), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="does not fit"):
        mb.read(5)
    with pytest.raises(ValueError, match="prototypes must be"):
        mb.init_from_prototypes(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="embeddings must be"):
        mb.update(torch.zeros(2, 3, 5), torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="targets and logits"):
        mb.update(torch.zeros(2, 3, 2), torch.zeros(2, 4), torch.zeros(2, 3))


# ----------------------------------------------------------------------------------------------- prototypes
class FakeSADCL(nn.Module):
    """Stands in for the network: the "image" is already h [B, C, D]; the logit is h[..., 0]."""

    def __init__(self, C: int, D: int) -> None:
        super().__init__()
        self.prototypes = nn.Parameter(torch.full((C, D), 7.0))
        self.drop = nn.Dropout(0.5)  # would corrupt h if the model were left in training mode
        self.calls: list[tuple[bool, bool]] = []

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((self.training, torch.is_inference_mode_enabled()))
        return self.drop(x)

    def forward_head(self, h: torch.Tensor) -> torch.Tensor:
        return h[..., 0]


def prototype_data():
    g = torch.Generator().manual_seed(3)
    C, D = 4, 3
    h = torch.randn(10, C, D, generator=g)
    y = torch.zeros(10, C)
    y[:, 0] = 1  # mixed confidence
    h[:5, 0, 0] = 3.0
    h[5:, 0, 0] = -3.0
    y[:4, 1] = 1  # positives, none confident: fallback to their mean
    h[:, 1, 0] = -3.0
    y[:, 2] = (torch.arange(10) % 2).float()  # all confident
    h[:, 2, 0] = 4.0
    # class 3: no positive at all → keeps the model's row
    loader = [(h[i : i + 4], y[i : i + 4]) for i in range(0, 10, 4)]
    return h, y, loader, C, D


def loop_prototypes(h, y, current, thr=0.85):
    out, counts = current.clone(), []
    for c in range(h.shape[1]):
        conf = [b for b in range(h.shape[0]) if y[b, c] == 1 and torch.sigmoid(h[b, c, 0]) > thr]
        pos = [b for b in range(h.shape[0]) if y[b, c] == 1]
        counts.append(len(conf))
        if conf:
            out[c] = torch.stack([h[b, c] for b in conf]).mean(0)
        elif pos:
            out[c] = torch.stack([h[b, c] for b in pos]).mean(0)
    return out, torch.tensor(counts)


def test_compute_prototypes_matches_loop_and_fallbacks():
    h, y, loader, C, D = prototype_data()
    model = FakeSADCL(C, D)
    protos, counts = compute_prototypes(model, loader)
    ref, ref_counts = loop_prototypes(h, y, model.prototypes.detach())
    torch.testing.assert_close(protos, ref)
    assert torch.equal(counts, ref_counts) and counts.tolist() == [5, 0, 5, 0]
    assert torch.equal(protos[3], torch.full((D,), 7.0))
    assert protos.dtype == torch.float32 and not protos.requires_grad
    assert model.training and model.calls == [(False, True)] * 3  # eval + inference mode, then restored


def test_compute_prototypes_options_and_init_in_place():
    h, y, loader, C, D = prototype_data()
    model = FakeSADCL(C, D).eval()
    _, counts = compute_prototypes(model, loader, max_batches=1, threshold=0.99)
    assert len(model.calls) == 1 and not model.training
    ref, ref_counts = loop_prototypes(h[:4], y[:4], model.prototypes.detach(), thr=0.99)
    assert torch.equal(counts, ref_counts)
    model.train()
    counts = init_prototypes_(model, loader)
    ref, _ = loop_prototypes(h, y, torch.full((C, D), 7.0))
    torch.testing.assert_close(model.prototypes.detach(), ref)
    assert isinstance(model.prototypes, nn.Parameter) and model.prototypes.requires_grad
    assert counts.tolist() == [5, 0, 5, 0] and model.training


def test_compute_prototypes_restores_mode_on_error():
    model = FakeSADCL(4, 3)
    with pytest.raises(ValueError, match="expected h"):
        compute_prototypes(model, [(torch.zeros(2, 4, 3), torch.zeros(2, 5))])
    assert model.training
    with pytest.raises(TypeError, match=r"\(images, targets\)"):
        compute_prototypes(model, [torch.zeros(2, 4, 3)])
