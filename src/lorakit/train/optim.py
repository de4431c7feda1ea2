"""AdamW over the adapter's parameters only, with LoRA+ learning rates.

LoRA+ (Hayou et al., 2024) trains ``B`` faster than ``A``: ``lr_B = ratio · lr``. Weight decay applies to
matrices (A, B, saved modules' weights), never to vectors (biases, DoRA magnitudes).
"""

from __future__ import annotations

import torch
from torch import nn

from lorakit.core.model import adapter_parameters
from lorakit.train.bnb_optim import make_8bit_optimizer


def param_groups(
    model: nn.Module, adapter: str, lr: float, weight_decay: float = 0.0, loraplus_ratio: float | None = None
) -> list[dict]:
    """Optimizer groups of every trainable parameter; each group has ``lr`` and ``base_lr`` (the peak rate)."""
    named = dict(adapter_parameters(model, adapter))
    for pname, p in model.named_parameters():
        if p.requires_grad and all(p is not q for q in named.values()):
            named[pname] = p
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for pname, p in named.items():
        if not p.requires_grad:
            continue
        is_b = ".lora_B." in pname or ".lora_embedding_B." in pname
        kind = "B" if is_b and loraplus_ratio else "rest"
        groups.setdefault((kind, p.ndim >= 2), []).append(p)
    result = []
    for (kind, decays), params in groups.items():
        peak = lr * loraplus_ratio if kind == "B" else lr
        result.append(
            {
                "params": params,
                "lr": peak,
                "base_lr": peak,
                "weight_decay": weight_decay if decays else 0.0,
                "name": f"{kind}{'' if decays else '-no-decay'}",
            }
        )
    return result


def make_optimizer(groups: list[dict], kind: str = "adamw") -> torch.optim.Optimizer:
    """AdamW (fused where the device supports it: one kernel per step instead of a loop over tensors), or
    bitsandbytes' 8-bit AdamW for ``adamw_8bit``/``paged_adamw_8bit``."""
    if kind != "adamw":
        return make_8bit_optimizer(groups, kind)
    device = groups[0]["params"][0].device
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=1e-8, fused=fused)
