"""LoraConv: LoRA around ``nn.Conv1d``/``nn.Conv2d``/``nn.Conv3d`` in PEFT's layout.

::

    x ──► W₀ * x (the base convolution, any stride/padding/groups) ─────────────────┐
    │                                                                              (+) ──► h
    └──► dropout ──► A * · (kernel-shaped: r filters of the base's kernel) ──► B * · (1×1) ──► · scale ──┘

``A: (r, in, *kernel)`` convolves with the base's kernel size, stride and padding (dilation 1, no groups);
``B: (out, r / groups, 1, …)`` is a pointwise convolution with the base's groups. With ``groups == 1`` the
update is a kernel ``ΔW[o, i, …] = scale · Σ_k B[o, k] A[k, i, …]`` that can be merged into ``W₀``; with
``groups > 1`` it cannot (PEFT refuses too), and merging raises :class:`MergeError`.
Source: PEFT's ``lora.Conv2d``/``_ConvNd`` (same keys ``lora_A.weight``/``lora_B.weight`` and shapes).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.core.errors import AdapterStateError, ConfigError, MergeError
from lorakit.core.layers.base import LoraLayer
from lorakit.core.targeting import conv_refusal

_CONV_FN = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


class LoraConv(LoraLayer):
    """LoRA around an N-d convolution (N = 1, 2, 3). Shapes: ``x: (batch, in, *spatial)`` →
    ``h: (batch, out, *spatial_out)``; ``A: (r, in, *kernel)``, ``B: (out, r // groups, 1, …)``."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer, base_layer.in_channels, base_layer.out_channels)
        self.dims = base_layer.weight.dim() - 2
        self.groups = base_layer.groups

    def add_adapter(self, name: str, r: int, scale: float, dropout: float, init: str = "default") -> None:
        """Create adapter ``name`` of rank ``r`` with kernel-shaped A and zero B (the output is unchanged).

        Raises:
            ConfigError: the base convolution is one PEFT's conv LoRA does not reproduce (:func:`conv_refusal`),
                or ``init`` is PiSSA/OLoRA (defined for linear layers).
        """
        if name in self.lora_A:
            raise AdapterStateError(
                f"layer {self.path}: adapter {name!r} already exists; delete it first or pick another name"
            )
        refusal = conv_refusal(self.base_layer, r)
        if refusal:
            raise ConfigError(f"layer {self.path}: lorakit cannot adapt a convolution with {refusal}; exclude it")
        if init not in ("default", "gaussian"):
            raise ConfigError(
                f"layer {self.path}: init {init!r} is for linear layers; "
                "exclude convolutions or use init default/gaussian"
            )
        weight = self.base_layer.weight
        factory = {"device": weight.device, "dtype": self._adapter_dtype(weight)}
        kernel = tuple(self.base_layer.kernel_size)
        self.lora_A[name] = nn.Parameter(torch.empty(r, self.in_features, *kernel, **factory))
        self.lora_B[name] = nn.Parameter(torch.empty(self.out_features, r // self.groups, *(1,) * self.dims, **factory))
        self.scaling[name] = float(scale)
        self.dropout_p[name] = float(dropout)
        self.reset_adapter(name, init)

    def reset_adapter(self, name: str, init: str = "default") -> None:
        """Kaiming-uniform A (as ``nn.Conv*d`` initialises its weight) or N(0, 1/r) A; zero B."""
        A, B = self.lora_A[name], self.lora_B[name]
        with torch.no_grad():
            if init == "gaussian":
                nn.init.normal_(A, std=1.0 / A.shape[0])
            else:
                nn.init.kaiming_uniform_(A, a=math.sqrt(5))
            nn.init.zeros_(B)

    def merge_refusal(self) -> str | None:
        """None with ``groups == 1``. With groups, ``A`` (not grouped) connects every input channel to every
        output, which the base's grouped kernel ``(out, in / groups, …)`` cannot hold (PEFT refuses too)."""
        if self.groups == 1:
            return None
        return f"a LoRA on a convolution with groups={self.groups} cannot be merged (PEFT cannot either)"

    def delta_weight(self, name: str) -> torch.Tensor:
        """``ΔW = scale · Σ_k B[o, k] A[k, i, …]``: ``(out, in, *kernel)`` in fp32 (groups == 1 only).

        Raises:
            MergeError: the convolution is grouped (:meth:`merge_refusal`).
        """
        refusal = self.merge_refusal()
        if refusal:
            raise MergeError(f"layer {self.path}: {refusal}; keep the adapter unmerged")
        A = self.lora_A[name].float()  # (r, in, *kernel)
        B = self.lora_B[name].float().flatten(1)  # (out, r)
        return self.scaling[name] * torch.einsum("or,ri...->oi...", B, A)  # (out, in, *kernel)

    def factor_forward(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """``B * (A * x)``, unscaled:
        ``(batch, in, *spatial)`` → ``(batch, r, *spatial_out)`` → ``(batch, out, *spatial_out)``.
        """
        base = self.base_layer
        conv = _CONV_FN[self.dims]
        A, B = self.lora_A[name], self.lora_B[name]
        if x.dtype != A.dtype and not torch.is_autocast_enabled(x.device.type):
            x = x.to(A.dtype)
        p = self.dropout_p[name]
        if p > 0:
            x = F.dropout(x, p=p, training=self.training)
        h = conv(x, A, None, base.stride, base.padding)  # (batch, r, *spatial_out)
        return conv(h, B, None, 1, 0, 1, self.groups)  # (batch, out, *spatial_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``h = W₀ * x + Σₐ sₐ · Bₐ * (Aₐ * dropout(x))`` over the active, unmerged adapters; with a row routing,
        each row of the batch adds its own adapter's term (or none)."""
        out = self.base_layer(x)
        routing = self._check_routing()
        if routing is not None:
            for name, rows in routing.groups.items():
                if name in self.lora_A:
                    delta = self.factor_forward(x.index_select(0, rows), name)  # (n_rows, out, *spatial_out)
                    out = out.index_add(0, rows, delta.to(out.dtype), alpha=self.scaling[name])
            return out
        for name in self._unmerged_active():
            out = out + self.scaling[name] * self.factor_forward(x, name).to(out.dtype)
        return out

    def extra_repr(self) -> str:
        ranks = ", ".join(f"{n}: r={self.rank(n)}" for n in self.adapter_names)
        return (
            f"conv{self.dims}d in={self.in_features}, out={self.out_features}, "
            f"adapters=[{ranks}], active={list(self.active)}"
        )
