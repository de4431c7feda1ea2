"""LoraLinear: ``h = W₀x + Σ_active scale · B(A(dropout(x)))`` around ``nn.Linear``, transformers' ``Conv1D``
or a bitsandbytes-quantised linear (QLoRA).

Variants live beside plain LoRA in the same dicts: an adapter with a ``lora_magnitude`` entry is DoRA
(``variants/dora.py``); one with a ``lora_E`` entry is AdaLoRA's SVD form ``B·diag(Λ)·A`` (``variants/adalora.py``).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.core import quant
from lorakit.core.layers import routed
from lorakit.core.layers.base import LoraLayer
from lorakit.core.layers.variants import dora


def linear_shape(module: nn.Module) -> tuple[int, int, bool]:
    """``(in_features, out_features, fan_in_fan_out)`` of a linear-like module.

    transformers' ``Conv1D`` stores its weight as (in, out) and computes ``x @ W``; ``nn.Linear`` stores
    (out, in). Quantised linears (bitsandbytes) expose ``in_features``/``out_features`` like ``nn.Linear``.
    """
    if type(module).__name__ == "Conv1D":
        in_features, out_features = module.weight.shape
        return in_features, out_features, True
    return module.in_features, module.out_features, False


def can_add_in_place(out: torch.Tensor, *, keeps_base_output: bool) -> bool:
    """Whether adapter deltas may be added into the base output ``out: (..., out)`` itself, saving one copy.

    Not when ``out`` is a view (bitsandbytes returns one from a custom autograd Function when the layer has a
    bias, and autograd forbids changing such a view in place), nor when a DoRA adapter still needs the pure
    base output ``W₀x + b`` after another adapter's delta was added.
    """
    return not out._is_view() and not keeps_base_output


class LoraLinear(LoraLayer):
    """LoRA around a linear layer. ``A: (r, in)``, ``B: (out, r)``; the product B·A is never formed in forward
    (DoRA forms it once per forward for its weight norm, as the method requires)."""

    adapter_param_names = ("lora_A", "lora_B", "lora_magnitude", "lora_E")
    state_param_names = ("lora_A0", "lora_B0")

    def __init__(self, base_layer: nn.Module) -> None:
        in_features, out_features, fan_in_fan_out = linear_shape(base_layer)
        super().__init__(base_layer, in_features, out_features)
        self.fan_in_fan_out = fan_in_fan_out
        self.lora_magnitude = nn.ParameterDict()  # DoRA's m: (out,)
        self.lora_E = nn.ParameterDict()  # AdaLoRA's Λ: (r,)
        self.lora_A0 = nn.ParameterDict()  # PiSSA/OLoRA: A and B at initialisation (frozen), to save against W₀
        self.lora_B0 = nn.ParameterDict()
        self.dora_factors: dict[str, torch.Tensor] = {}  # f of each merged DoRA adapter, to unmerge exactly
        # the quantised layer as it was before the first merge; a plain attribute, not a submodule (no state_dict key)
        self.__dict__["quantized_base"] = None

    def reset_adapter(self, name: str, init: str = "default") -> None:
        """Kaiming-uniform A (as ``nn.Linear`` initialises its weight) or N(0, 1/r) A with zero B; or, for
        ``pissa``/``pissa_niter_K``/``olora``, the principal factors of W₀ (which keeps the residual)."""
        if init.startswith("pissa") or init == "olora":
            from lorakit.core.layers.variants.principal import principal_init

            principal_init(self, name, init)
            return
        A, B = self.lora_A[name], self.lora_B[name]
        with torch.no_grad():
            if init == "gaussian":
                nn.init.normal_(A, std=1.0 / A.shape[0])
            else:
                nn.init.kaiming_uniform_(A, a=math.sqrt(5))
            nn.init.zeros_(B)

    def is_quantized(self) -> bool:
        return quant.is_quantized(self.base_layer)

    def dense_weight(self) -> torch.Tensor:
        """W₀ in fp32 as ``(out, in)``: dequantised if quantised, transposed if Conv1D."""
        weight = self.read_weight()
        return weight.T if self.fan_in_fan_out else weight

    def read_weight(self) -> torch.Tensor:
        return quant.dequantize(self.base_layer) if self.is_quantized() else super().read_weight()

    def original_weight(self) -> torch.Tensor:
        """W₀ (fp32, base layout); for a quantised base merged into, the dequantised layer kept from before."""
        if self.quantized_base is not None:
            return quant.dequantize(self.quantized_base)
        return super().original_weight()

    def write_weight(self, weight: torch.Tensor, requantize: bool = False) -> None:
        """Store ``weight``; a quantised base is re-quantised with ``requantize``, else replaced by a float
        ``nn.Linear`` (in the dtype the model had before quantisation). The quantised layer of before the first
        merge is kept (:attr:`quantized_base`, 4-bit: small) so that :meth:`unmerge` puts it back bit for bit."""
        if not self.is_quantized():
            return super().write_weight(weight)
        base = self.base_layer
        if self.quantized_base is None:
            self.__dict__["quantized_base"] = base
        if requantize:
            requantized = copy.deepcopy(base) if base is self.quantized_base else base
            quant.set_weight(requantized, weight)
            self.base_layer = requantized
            return
        dtype = getattr(base, "lorakit_float_dtype", torch.float32)
        dense = nn.Linear(
            self.in_features, self.out_features, bias=base.bias is not None, device=weight.device, dtype=dtype
        )
        dense.weight.data.copy_(weight)
        if base.bias is not None:
            dense.bias.data.copy_(base.bias.data)
        dense.requires_grad_(False)
        dense.train(self.training)
        self.base_layer = dense

    def factor_product(self, name: str) -> torch.Tensor:
        """``B·A`` (``B·diag(Λ)·A`` for AdaLoRA) in fp32, ``(out, in)``."""
        A = self.lora_A[name].float()
        if name in self.lora_E:
            A = self.lora_E[name].float().view(-1, 1) * A  # (r, 1) ⊙ (r, in)
        return self.lora_B[name].float() @ A  # (out, r)(r, in) -> (out, in)

    def delta_weight(self, name: str) -> torch.Tensor:
        delta = self.scaling[name] * self.factor_product(name)
        return delta.T if self.fan_in_fan_out else delta

    def merged_weight(self, name: str, weight: torch.Tensor, base: torch.Tensor | None = None) -> torch.Tensor:
        """``W + ΔW`` for fp32 ``weight`` in the base layout; for DoRA ``f ⊙ (W + s·B·A)`` with ``f`` from the
        norm of ``W₀ + s·B·A`` (``base`` = W₀, default ``weight``), as DoRA acts in forward. Reads only."""
        if name not in self.lora_magnitude:
            return super().merged_weight(name, weight, base)
        f = dora.factor(self, name, self._dense(weight if base is None else base)).detach()
        return self._dense(dora.merged_weight(self, name, self._dense(weight), f))

    def _dense(self, weight: torch.Tensor) -> torch.Tensor:
        """Base layout <-> ``(out, in)``: a transpose for Conv1D (its own inverse), else ``weight`` itself."""
        return weight.T if self.fan_in_fan_out else weight

    def unmerged_weight(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`merged_weight`; DoRA divides by the ``f`` recorded when it was merged. Reads only."""
        if name not in self.lora_magnitude:
            return super().unmerged_weight(name, weight)
        dense = weight.T if self.fan_in_fan_out else weight
        restored = dora.unmerged_weight(self, name, dense, self.dora_factors[name])
        return restored.T if self.fan_in_fan_out else restored

    def merge(self, name: str, safe: bool = True, requantize: bool = False) -> None:
        """:meth:`LoraLayer.merge`, recording DoRA's ``f`` (from W₀) so unmerging is exact."""
        dora_f = name in self.lora_magnitude and name not in self.merged
        f = dora.factor(self, name, self._dense(self.original_weight())).detach() if dora_f else None
        super().merge(name, safe, requantize)
        if f is not None:
            self.dora_factors[name] = f

    def unmerge(self) -> None:
        """:meth:`LoraLayer.unmerge`, then forget the recorded DoRA factors. A quantised base merged into gets
        its own quantised layer back, exactly as it was (no subtract-and-requantise rounding)."""
        if self.quantized_base is not None:
            self.base_layer, self.__dict__["quantized_base"] = self.quantized_base, None
            self.merged.clear()
        super().unmerge()
        self.dora_factors.clear()

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """``h = W₀x + b + Σₐ sₐ · Bₐ(Aₐ(dropoutₐ(x)))`` over the active adapters not merged into ``W₀``.

        Shapes: ``x: (..., in)`` → ``h: (..., out)``; ``Aₐ: (r, in)``, ``Bₐ: (out, r)``, ``sₐ = α/r`` (``α/√r``
        with rsLoRA). The product ``B·A`` is never formed: the cost is ``r·(in + out)`` multiply-adds per token.
        A DoRA adapter adds ``(f−1)⊙W₀x + f⊙s·B·A·x`` instead (``variants/dora.py``); AdaLoRA scales the rank
        dimension by ``Λ``. With a :class:`RowRouting` set, each row gets its own adapter (``layers/routed.py``).
        Under autocast the adapter matmuls run in the autocast dtype; otherwise ``x`` is cast to the adapter
        dtype and the delta back to the output's. Dropout runs only when ``p > 0`` and training.

        Source: Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models" (2021), eq. 3.
        """
        out = self.base_layer(x, *args, **kwargs)  # W₀x + b: (..., in) -> (..., out)
        routing = self._check_routing()
        if routing is not None:
            return self._add_routed(x, out, routing)
        active = self._unmerged_active()
        dora_active = [name for name in active if name in self.lora_magnitude]
        in_place = can_add_in_place(out, keeps_base_output=bool(dora_active))
        for name in active:
            if name in dora_active:
                delta, scale = dora.extra_output(self, name, x, out), 1.0  # (..., out): rescales all before it
            else:
                delta, scale = self.factor_forward(self.adapter_input(x, name), name), self.scaling[name]  # (..., out)
            delta = delta.to(out.dtype)
            out = out.add_(delta, alpha=scale) if in_place else out.add(delta, alpha=scale)
        return out

    def adapter_input(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """x cast to the adapter dtype (autocast does that itself), with dropout when training."""
        A = self.lora_A[name]
        if x.dtype != A.dtype and not torch.is_autocast_enabled(x.device.type):
            x = x.to(A.dtype)
        p = self.dropout_p[name]
        return F.dropout(x, p=p, training=self.training) if p > 0 else x

    def factor_forward(self, h: torch.Tensor, name: str) -> torch.Tensor:
        """``B(A h)`` (``B(Λ ⊙ A h)`` for AdaLoRA), unscaled."""
        xa = F.linear(h, self.lora_A[name])  # (..., in) @ Aᵀ (in, r) -> (..., r)
        if name in self.lora_E:
            xa = xa * self.lora_E[name]  # (..., r) ⊙ Λ (r,)
        return F.linear(xa, self.lora_B[name])  # (..., r) @ Bᵀ (r, out) -> (..., out)

    def _add_routed(self, x: torch.Tensor, out: torch.Tensor, routing) -> torch.Tensor:
        """Per-row adapters: plain LoRA rows by rank group in batched matmuls (``layers/routed.py``); DoRA and
        AdaLoRA rows, and dropout while training, per group of rows sharing an adapter."""
        groups, slow = routed.plan(self, routing)
        if groups:
            out = routed.add_rows(self, x, out, groups)
        for name in slow:
            rows = routing.groups[name]
            x_rows = x.index_select(0, rows)  # (n_rows, ..., in)
            if name in self.lora_magnitude:
                delta, scale = dora.extra_output(self, name, x_rows, out.index_select(0, rows)), 1.0
            else:
                delta, scale = self.factor_forward(self.adapter_input(x_rows, name), name), self.scaling[name]
            if out._is_view():
                out = out.index_add(0, rows, delta.to(out.dtype), alpha=scale)
            else:
                out.index_add_(0, rows, delta.to(out.dtype), alpha=scale)
        return out

    def extra_repr(self) -> str:
        ranks = ", ".join(
            f"{n}: r={self.rank(n)}{' dora' if n in self.lora_magnitude else ''}" for n in self.adapter_names
        )
        return f"in={self.in_features}, out={self.out_features}, adapters=[{ranks}], active={list(self.active)}"
