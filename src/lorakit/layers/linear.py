"""LoraLinear: ``h = W₀x + Σ_active scale · B(A(dropout(x)))`` around ``nn.Linear`` or transformers' ``Conv1D``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.layers.base import LoraLayer


def linear_shape(module: nn.Module) -> tuple[int, int, bool]:
    """``(in_features, out_features, fan_in_fan_out)`` of a linear-like module.

    transformers' ``Conv1D`` stores its weight as (in, out) and computes ``x @ W``; ``nn.Linear`` stores
    (out, in). Quantised linears (bitsandbytes) expose ``in_features``/``out_features`` like ``nn.Linear``.
    """
    if type(module).__name__ == "Conv1D":
        in_features, out_features = module.weight.shape
        return in_features, out_features, True
    return module.in_features, module.out_features, False


class LoraLinear(LoraLayer):
    """LoRA around a linear layer. ``A: (r, in)``, ``B: (out, r)``; the product B·A is never formed in forward."""

    def __init__(self, base_layer: nn.Module) -> None:
        in_features, out_features, fan_in_fan_out = linear_shape(base_layer)
        super().__init__(base_layer, in_features, out_features)
        self.fan_in_fan_out = fan_in_fan_out

    def reset_adapter(self, name: str, init: str = "default") -> None:
        """Kaiming-uniform A (as ``nn.Linear`` initialises its weight) or N(0, 1/r) A; zero B."""
        A, B = self.lora_A[name], self.lora_B[name]
        with torch.no_grad():
            if init == "gaussian":
                nn.init.normal_(A, std=1.0 / A.shape[0])
            else:
                nn.init.kaiming_uniform_(A, a=math.sqrt(5))
            nn.init.zeros_(B)

    def delta_weight(self, name: str) -> torch.Tensor:
        delta = self.scaling[name] * (self.lora_B[name].float() @ self.lora_A[name].float())  # (out, r)(r, in) -> (out, in)
        return delta.T if self.fan_in_fan_out else delta

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = self.base_layer(x, *args, **kwargs)
        routing = self._check_routing()
        if routing is not None:
            return self._add_routed(x, out, routing)
        for name in self._unmerged_active():
            out = self._add_delta(x, out, name)
        return out

    def _adapter_input(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """x cast to the adapter dtype (autocast does that itself), with dropout when training."""
        A = self.lora_A[name]
        if x.dtype != A.dtype and not torch.is_autocast_enabled(x.device.type):
            x = x.to(A.dtype)
        p = self.dropout_p[name]
        return F.dropout(x, p=p, training=self.training) if p > 0 else x

    def _add_delta(self, x: torch.Tensor, out: torch.Tensor, name: str) -> torch.Tensor:
        h = self._adapter_input(x, name)
        xa = F.linear(h, self.lora_A[name])  # (..., in) @ (in, r) -> (..., r)
        delta = F.linear(xa, self.lora_B[name])  # (..., r) @ (r, out) -> (..., out)
        return out.add_(delta.to(out.dtype), alpha=self.scaling[name])

    def _add_routed(self, x: torch.Tensor, out: torch.Tensor, routing) -> torch.Tensor:
        """Per-row adapters: each group of rows sharing an adapter gets one segment matmul pair."""
        for name, rows in routing.groups.items():
            if name not in self.lora_A:
                continue
            h = self._adapter_input(x.index_select(0, rows), name)  # (n_rows, ..., in)
            delta = F.linear(F.linear(h, self.lora_A[name]), self.lora_B[name])  # (n_rows, ..., r) -> (n_rows, ..., out)
            out.index_add_(0, rows, delta.to(out.dtype), alpha=self.scaling[name])
        return out

    def extra_repr(self) -> str:
        ranks = ", ".join(f"{n}: r={self.rank(n)}" for n in self.adapter_names)
        return f"in={self.in_features}, out={self.out_features}, adapters=[{ranks}], active={list(self.active)}"
