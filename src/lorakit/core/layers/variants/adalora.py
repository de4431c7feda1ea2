"""AdaLoRA's SVD-form adapters on LoraLinear: ``A = Q: (r, in)``, ``B = P: (out, r)``, ``lora_E = Λ: (r,)``.

``ΔW = (α/r_init)·P·diag(Λ)·Q``. Λ starts at zero (a fresh adapter is the base), P and Q at N(0, 0.02²) as in
the paper. Pruning a triplet sets its ``Λ_i`` to zero. The regulariser keeps P and Q near-orthogonal so that Λ
behaves like singular values:  ``R = mean over matrices of ‖QQᵀ − I‖_F and ‖PᵀP − I‖_F``.
"""

from __future__ import annotations

import torch
from torch import nn

from lorakit.core.config import LoraConfig
from lorakit.core.errors import ConfigError
from lorakit.core.layers import LoraLinear
from lorakit.core.model import inject, lora_layers


def inject_adalora(model: nn.Module, config: LoraConfig, init_r: int, name: str = "default") -> nn.Module:
    """Inject adapter ``name`` with ``config``'s targets at rank ``init_r`` in SVD form; returns ``model``."""
    if config.use_dora or config.init not in ("default", "gaussian") or config.rank_pattern:
        raise ConfigError("AdaLoRA allocates ranks itself: use it without use_dora, pissa/olora init or rank_pattern")
    inject(model, config.replace(r=init_r), name)
    for mname, layer in lora_layers(model):
        if name not in layer.lora_A:
            continue
        if not isinstance(layer, LoraLinear):
            raise ConfigError(f"AdaLoRA adapts linear layers; target {mname!r} is an embedding: exclude it")
        A, B = layer.lora_A[name], layer.lora_B[name]
        with torch.no_grad():
            nn.init.normal_(A, std=0.02)
            nn.init.normal_(B, std=0.02)
        layer.lora_E[name] = nn.Parameter(torch.zeros(A.shape[0], dtype=A.dtype, device=A.device))
    return model


def orthogonality_penalty(model: nn.Module, name: str = "default") -> torch.Tensor:
    """``mean(‖QQᵀ − I‖_F, ‖PᵀP − I‖_F)`` over every SVD-form layer of adapter ``name``."""
    terms = []
    for _, layer in lora_layers(model):
        if name in getattr(layer, "lora_E", {}):
            Q, P = layer.lora_A[name], layer.lora_B[name]
            eye = torch.eye(Q.shape[0], device=Q.device, dtype=Q.dtype)
            terms.append(torch.linalg.norm(Q @ Q.T - eye))  # (r, in)(in, r) -> (r, r)
            terms.append(torch.linalg.norm(P.T @ P - eye))  # (r, out)(out, r) -> (r, r)
    if not terms:
        raise ConfigError(f"adapter {name!r} has no AdaLoRA (SVD-form) layers")
    return torch.stack(terms).mean()


def kept_ranks(model: nn.Module, name: str = "default") -> dict[str, int]:
    """Module name -> number of triplets with non-zero Λ."""
    return {
        mname: int((layer.lora_E[name] != 0).sum())
        for mname, layer in lora_layers(model)
        if name in getattr(layer, "lora_E", {})
    }
