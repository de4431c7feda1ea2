"""Variant adapters in plain-LoRA form: what ``save_adapter`` writes, so PEFT, vLLM and lorakit all load it.

- PiSSA/OLoRA: rank 2r against the original W₀ (``[A; A₀]``, ``[B, −B₀]``, see
  ``lorakit.core.layers.variants.principal``).
- AdaLoRA: the triplets the rank budget kept, ``Λ`` folded into A: ``A' = diag(Λ_k)·A_k``, ``B' = B_k``; a module
  whose triplets were all pruned keeps rank 1 with ``B' = 0`` (no change to its output).
- DoRA: saved as is (PEFT reads ``lora_magnitude_vector``); plain LoRA: as is.

Each module's scale is preserved: its rank becomes ``r'`` and its alpha ``scale·r'`` (``scale·√r'`` with rsLoRA),
written as ``rank_pattern``/``alpha_pattern`` where they differ from the most common ``r``/``alpha``.
"""

from __future__ import annotations

import math
from collections import Counter

import torch
from torch import nn

from lorakit.core.config import LoraConfig
from lorakit.core.layers import LoraLayer, LoraLinear
from lorakit.core.layers.variants.principal import plain_factors


def export_tensors(layer: LoraLayer, name: str) -> dict[str, torch.Tensor]:
    """Adapter ``name``'s tensors of ``layer`` by attribute (``lora_A``, ``lora_B``, ``lora_magnitude``), plain form."""
    if not isinstance(layer, LoraLinear):
        return {attr: getattr(layer, attr)[name] for attr in layer.adapter_param_names if name in getattr(layer, attr)}
    if name in layer.lora_A0:
        A, B = plain_factors(layer, name)
    elif name in layer.lora_E:
        A, B = _kept_triplets(layer, name)
    else:
        A, B = layer.lora_A[name], layer.lora_B[name]
    tensors = {"lora_A": A, "lora_B": B}
    if name in layer.lora_magnitude:
        tensors["lora_magnitude"] = layer.lora_magnitude[name]
    return tensors


def _kept_triplets(layer: LoraLinear, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    E, A, B = layer.lora_E[name].detach(), layer.lora_A[name].detach(), layer.lora_B[name].detach()
    kept = torch.nonzero(E != 0).flatten()
    if kept.numel() == 0:
        return torch.zeros_like(A[:1]), torch.zeros_like(B[:, :1])
    return E[kept].view(-1, 1) * A[kept], B[:, kept]  # (r', in), (out, r')


def export_config(config: LoraConfig, model: nn.Module, name: str) -> LoraConfig:
    """``config`` rewritten for :func:`export_tensors`'s ranks, with each module's scale unchanged."""
    from lorakit.core.model import lora_layers

    ranks, alphas = {}, {}
    for mname, layer in lora_layers(model):
        if name not in layer.lora_A:
            continue
        rank = export_tensors(layer, name)["lora_A"].shape[0]
        ranks[mname] = rank
        alphas[mname] = layer.scaling[name] * (math.sqrt(rank) if config.use_rslora else rank)
    changed = any(ranks[m] != config.rank_for(m) or not math.isclose(alphas[m], config.alpha_for(m)) for m in ranks)
    if not changed and config.init in ("default", "gaussian"):
        return config
    r = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(round(a, 9) for m, a in alphas.items() if ranks[m] == r).most_common(1)[0][0]
    rank_pattern = {m: k for m, k in ranks.items() if k != r}
    alpha_pattern = {m: a for m, a in alphas.items() if not math.isclose(a, alpha)}
    init = config.init if config.init == "gaussian" else "default"
    return config.replace(r=r, alpha=alpha, rank_pattern=rank_pattern, alpha_pattern=alpha_pattern, init=init)
