"""Merging adapters into a quantised (NF4 / int8) base, with the measured cost of the rounding.

Each adapted layer's weight is dequantised, ``W = deq(W_q) + ΔW`` is computed in fp32 (DoRA:
``W = f ⊙ (deq(W_q) + ΔW)``), then either kept in float — the merged model equals the unmerged one up to fp32
rounding, at float memory for those layers — or re-quantised (``requantize=True``): memory stays 4-bit but
``W`` is rounded to the NF4 grid again, which moves the outputs. The report measures that move on a sample
batch: the largest ``|Δlogit|`` and the mean per-token ``KL(p_unmerged ‖ p_merged)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.core.merge import merge
from lorakit.core.model import lora_layers
from lorakit.core.quant import is_quantized


@dataclass
class QuantMergeReport:
    """What merging changed in the outputs on the sample batch."""

    max_abs_logit_delta: float
    mean_kl: float
    requantized: bool
    quantized_layers: int

    def __str__(self) -> str:
        form = "re-quantised" if self.requantized else "kept in float"
        return (
            f"merged into {self.quantized_layers} quantised layers ({form}): "
            f"max |Δlogit| {self.max_abs_logit_delta:.4g}, "
            f"mean KL {self.mean_kl:.3g} nats/token"
        )


def sample_batch(model: nn.Module, batch: int = 2, length: int = 32, seed: int = 0) -> torch.Tensor:
    """A fixed batch of random token ids ``(batch, length)`` from the model's vocabulary."""
    vocab = model.get_input_embeddings().num_embeddings
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=generator).to(next(model.parameters()).device)


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits.float()  # (batch, length, vocab)


def merge_quantized(
    model: nn.Module,
    names: str | list[str] | None = None,
    *,
    requantize: bool = False,
    sample: torch.Tensor | None = None,
    safe: bool = True,
) -> QuantMergeReport:
    """Merge ``names`` (default: the active adapters) into ``model`` and report the change on ``sample``
    (token ids; default :func:`sample_batch`)."""
    ids = sample_batch(model) if sample is None else sample
    quantized = sum(1 for _, layer in lora_layers(model) if is_quantized(layer.base_layer))
    was_training = model.training
    model.eval()
    before = _logits(model, ids)
    merge(model, names, safe=safe, requantize=requantize)
    after = _logits(model, ids)
    model.train(was_training)
    log_p, log_q = F.log_softmax(before, dim=-1), F.log_softmax(after, dim=-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).mean()  # Σ_v p·log(p/q), averaged over tokens
    return QuantMergeReport((after - before).abs().max().item(), kl.item(), requantize, quantized)
