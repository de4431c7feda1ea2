"""8-bit AdamW (bitsandbytes): optimizer moments stored blockwise-quantised in 8 bits, ~75% less optimizer memory.

``adamw_8bit`` runs wherever bitsandbytes has its 8-bit optimizer kernels (CUDA, and CPU since 0.49);
``paged_adamw_8bit`` additionally pages the state through CUDA unified memory, so it needs CUDA.
"""

from __future__ import annotations

import torch

from lorakit.core.errors import ConfigError

OPTIMIZERS = ("adamw", "adamw_8bit", "paged_adamw_8bit")


def available(device: torch.device) -> list[str]:
    """The optimizer names usable on ``device``."""
    names = ["adamw"]
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return names
    names.append("adamw_8bit")
    if device.type == "cuda":
        names.append("paged_adamw_8bit")
    return names


def make_8bit_optimizer(groups: list[dict], kind: str) -> torch.optim.Optimizer:
    """bitsandbytes' AdamW8bit / PagedAdamW8bit over ``groups``; a one-line error where ``kind`` is unavailable."""
    device = groups[0]["params"][0].device
    names = available(device)
    if kind not in names:
        raise ConfigError(f"train.optim={kind} is not available on {device.type}; available here: {', '.join(names)}")
    import bitsandbytes as bnb

    cls = bnb.optim.PagedAdamW8bit if kind == "paged_adamw_8bit" else bnb.optim.AdamW8bit
    return cls(groups, betas=(0.9, 0.999), eps=1e-8)
