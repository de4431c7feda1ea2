"""The training objective: the sum of next-token cross-entropies over labelled tokens.

Only the hidden states of positions that have a label go through the output head, so prompt and padding
tokens cost nothing there: with ``h: (B, T, H)`` and mask ``m`` of the labelled positions,
``loss = Σ CE(W_out · h[m], y[m])``. The trainer divides by the number of labelled tokens of the whole
(global, accumulated) batch, so gradient accumulation and data parallelism give the token mean exactly.
Models whose logits are not a plain linear map of the last hidden state (soft-capping, logit scaling) use
the model's own logits instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.data.encode import IGNORE

_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")


class TokenLoss(nn.Module):
    """Wraps a causal LM; ``forward(batch)`` returns the summed cross-entropy of the batch's labelled tokens."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        config = getattr(model, "config", None)
        plain = head is not None and not any(getattr(config, k, None) for k in _LOGIT_TRANSFORMS)
        self.head = head if plain and getattr(model, "base_model", model) is not model else None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        targets = labels[:, 1:]  # (B, T-1): the token each position predicts
        mask = targets != IGNORE
        if self.head is None:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1]  # (B, T-1, V)
            return F.cross_entropy(logits[mask].float(), targets[mask], reduction="sum")
        hidden = self.model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        selected = hidden[:, :-1][mask]  # (N, H): positions with a label
        logits = self.head(selected).float()  # (N, H) @ (H, V) -> (N, V)
        return F.cross_entropy(logits, targets[mask], reduction="sum")
