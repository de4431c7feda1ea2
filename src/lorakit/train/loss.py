"""The training objective: the sum of next-token cross-entropies over labelled tokens.

Only the hidden states of positions that have a label go through the output head, so prompt and padding
tokens cost nothing there. With ``h: (N, H)`` those hidden states, ``W: (V, H)`` the (frozen) output head and
``y`` the labels, ``loss = Σ_i (logsumexp(W h_i) − (W h_i)_{y_i})``. The logits are never held whole: rows go
through in chunks, and each chunk's gradient ``∂loss/∂h = (softmax(W h) − onehot(y)) · W`` is computed on the
spot and kept (it is (N, H), tiny) instead of the (N, V) logits and log-probabilities — on a 49k vocabulary
that is most of a step's memory beyond the activations. The trainer divides by the labelled tokens of the whole
(global, accumulated) batch, so gradient accumulation and data parallelism give the token mean exactly.
Rows that all begin with the same unlabelled tokens (a system prompt) run that prefix once
(:mod:`lorakit.train.shared_prefix`). Models whose head is not a plain frozen linear map of the last hidden
state (soft-capping, logit scaling, an adapted or trained head) use the model's logits and ``F.cross_entropy``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.data.encode import IGNORE
from lorakit.train.shared_prefix import can_share, forward_shared, shared_length

_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")
CHUNK = 256


class _LinearCrossEntropy(torch.autograd.Function):
    """``Σ CE(h Wᵀ, y)`` for a frozen ``W``; saves only ``∂/∂h`` (N, H), computed chunk by chunk in forward.

    Each chunk reuses the same two (CHUNK, V) buffers and works in place: logits, then ``exp(z − max)``, then
    the softmax minus the one-hot target — no fresh (n, V) tensor per chunk.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, dtype: torch.dtype):
        weight = weight.to(dtype)
        accumulate = torch.promote_types(dtype, torch.float32)  # softmax in fp32 at least
        rows, vocab = hidden.shape[0], weight.shape[0]
        width = min(CHUNK, rows)
        low = torch.empty((width, vocab), dtype=dtype, device=hidden.device)
        high = low if dtype == accumulate else torch.empty((width, vocab), dtype=accumulate, device=hidden.device)
        total = torch.zeros((), dtype=accumulate, device=hidden.device)
        grad = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        for start in range(0, rows, CHUNK):
            h, y = hidden[start : start + CHUNK].to(dtype), targets[start : start + CHUNK]
            n = len(y)
            torch.matmul(h, weight.T, out=low[:n])  # (n, H) @ (H, V) -> (n, V)
            z = high[:n]
            if z is not low[:n]:
                z.copy_(low[:n])
            picked = z.gather(1, y[:, None]).squeeze(1)  # (n,): the target's logit
            top = z.amax(dim=1)  # (n,)
            z.sub_(top[:, None]).exp_()  # exp(z - max): (n, V)
            norm = z.sum(dim=1)  # (n,)
            total += (top + norm.log() - picked).sum()  # logsumexp - target logit
            if grad is not None:
                z.div_(norm[:, None])  # softmax
                z[torch.arange(n, device=y.device), y] -= 1.0
                if z is not low[:n]:
                    low[:n].copy_(z)
                grad[start : start + n] = low[:n] @ weight  # (n, V) @ (V, H) -> (n, H)
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return grad * grad_output.to(grad.dtype), None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of ``hidden @ weight.T`` against ``targets`` in the autocast dtype (if any)."""
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    with torch.autocast(device, enabled=False):
        return _LinearCrossEntropy.apply(hidden, weight, targets, dtype)


class TokenLoss(nn.Module):
    """Wraps a causal LM; ``forward(batch)`` returns the summed cross-entropy of the batch's labelled tokens."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        config = getattr(model, "config", None)
        plain = (
            type(head) is nn.Linear
            and head.bias is None
            and not head.weight.requires_grad
            and not any(getattr(config, k, None) for k in _LOGIT_TRANSFORMS)
        )
        self.fused = plain and getattr(model, "base_model", model) is not model
        self.share_prefix = True
        """Run a prefix every row shares once (:mod:`lorakit.train.shared_prefix`); turned off for good the
        first time the model's cache turns out not to allow it."""

    def _states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor):
        """``(states, targets)``: ``states[:, :-1]`` (B, T′ − 1, ·) are the last hidden states (fused) or the logits
        predicting ``targets`` (B, T′ − 1); T′ = T, or T − n when the rows' shared prefix of n tokens ran once."""
        body = self.model.base_model if self.fused else self.model
        n = shared_length(input_ids, attention_mask, labels) if self.share_prefix and can_share(body) else 0
        out = forward_shared(body, input_ids, attention_mask, n) if n else None
        if n and out is None:
            self.share_prefix = False
        if out is None:
            n = 0
            out = body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return (out.last_hidden_state if self.fused else out.logits), labels[:, n + 1 :]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        states, targets = self._states(input_ids, attention_mask, labels)
        mask = targets != IGNORE
        selected = states[:, :-1][mask]  # (N, ·): positions with a label
        if not self.fused:
            return F.cross_entropy(selected.float(), targets[mask], reduction="sum")
        return linear_cross_entropy(selected, self.model.get_output_embeddings().weight, targets[mask])

    def per_sequence(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Summed cross-entropy of each row's labelled tokens, shape (B,): minus its response log-probability."""
        states, targets = self._states(input_ids, attention_mask, labels)
        mask = targets != IGNORE
        if not self.fused:
            losses = F.cross_entropy(states[:, :-1][mask].float(), targets[mask], reduction="none")  # (N,)
            rows = torch.arange(len(targets), device=targets.device)[:, None].expand_as(targets)[mask]  # (N,)
            return torch.zeros(len(targets), dtype=losses.dtype, device=losses.device).index_add(0, rows, losses)
        weight = self.model.get_output_embeddings().weight
        sums = [linear_cross_entropy(states[i, :-1][mask[i]], weight, targets[i][mask[i]]) for i in range(len(targets))]
        return torch.stack(sums)  # (B,)
