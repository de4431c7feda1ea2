"""The chunked linear cross-entropy equals ``F.cross_entropy`` on full logits, in value and gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lorakit as lk
from lorakit.data.encode import IGNORE
from lorakit.train import loss as loss_module
from lorakit.train.loss import TokenLoss, linear_cross_entropy
from tests.helpers import tiny_llama, token_batch


def test_linear_cross_entropy_matches_full_logits_value_and_gradient(monkeypatch):
    monkeypatch.setattr(loss_module, "CHUNK", 7)  # several chunks, the last one short
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(30, 16, generator=generator, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, 50, (30,), generator=generator)
    ours = linear_cross_entropy(hidden, weight, targets)
    (grad_ours,) = torch.autograd.grad(3.0 * ours, hidden)
    reference = F.cross_entropy(hidden @ weight.T, targets, reduction="sum")
    (grad_reference,) = torch.autograd.grad(3.0 * reference, hidden)
    torch.testing.assert_close(ours.double(), reference, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad_ours, grad_reference, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("autocast", [False, True])
def test_token_loss_equals_the_models_own_loss(autocast):
    model = tiny_llama()
    lk.inject(model, lk.LoraConfig(r=4, alpha=8))
    ids = token_batch(3, 10)
    labels = ids.clone()
    labels[:, :4] = IGNORE
    context = torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast)
    fused = TokenLoss(model)
    assert fused.fused
    with context:
        ours = fused(ids, torch.ones_like(ids), labels)
    ours.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    with context:
        reference = model(input_ids=ids, labels=labels).loss * int((labels[:, 1:] != IGNORE).sum())
    reference.backward()
    tolerance = {"rtol": 2e-2, "atol": 2e-2} if autocast else {"rtol": 1e-5, "atol": 1e-6}
    torch.testing.assert_close(ours, reference.float(), **tolerance)
    for name, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(grads[name], p.grad, **tolerance)
