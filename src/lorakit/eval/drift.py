"""Drift of an adapted model from its base: mean KL(base ‖ adapted) of the next-token distributions."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lorakit.core.model import disabled
from lorakit.eval.general_sets import general_prompts
from lorakit.eval.generate import Prompt, pad_id, prompt_ids
from lorakit.eval.scoring import right_pad


@torch.inference_mode()
def drift_kl(model: nn.Module, tokenizer, prompts: Sequence[Prompt] | None = None, *, batch_size: int = 8) -> float:
    """Mean over every token position of every prompt of
    ``KL(p_base ‖ p_adapted) = Σ_v p_base(v)·(log p_base(v) − log p_adapted(v))``.

    Prompts (default: :func:`lorakit.eval.general_sets.general_prompts`) are rendered with the chat template.
    The base distribution is computed inside ``lk.disabled(model)``; the adapted one with the model's active
    adapters. An adapter whose B is zero leaves the logits bit-for-bit unchanged, so its drift is exactly 0.
    Log-probabilities are taken in fp64: the KL of two nearby distributions cancels badly in fp32.
    """
    if prompts is None:
        prompts = general_prompts()
    device = next(model.parameters()).device
    pad = pad_id(tokenizer)
    rows = [prompt_ids(tokenizer, p) for p in prompts]
    total, positions = 0.0, 0
    for begin in range(0, len(rows), batch_size):
        ids, mask = right_pad(rows[begin : begin + batch_size], pad, device)
        with disabled(model):
            base = torch.log_softmax(
                model(input_ids=ids, attention_mask=mask).logits.double(), dim=-1
            )  # (B, T, V) in fp64
        adapted = torch.log_softmax(
            model(input_ids=ids, attention_mask=mask).logits.double(), dim=-1
        )  # (B, T, V) in fp64
        kl = (base.exp() * (base - adapted)).sum(-1)  # (B, T)
        keep = mask.bool()
        total += float(kl[keep].sum())
        positions += int(keep.sum())
    return total / positions if positions else 0.0
