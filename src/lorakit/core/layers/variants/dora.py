"""DoRA (weight-decomposed LoRA): a learned magnitude per output feature times a normalised direction.

With ``V = W₀ + s·B·A`` (``(out, in)``) and ``m: (out,)`` the adapted weight is ``W' = (m / ‖V‖_row) ⊙ V``,
``‖V‖_row`` the L2 norm of each output row (PEFT's "column" norm of ``Vᵀ``). The norm is detached in forward
(the paper's memory-saving variant, §4.3), so no gradient flows through it. ``m`` starts at ``‖W₀‖_row``
(B = 0), so a fresh adapter reproduces the base. With ``f = m / ‖V‖`` the forward adds, on top of
``W₀x + b``::

    (f − 1) ⊙ W₀x  +  f ⊙ s·B·A·x

which equals ``W'x + b`` without forming ``W'`` for the matmul. PEFT stores ``m`` as ``lora_magnitude_vector``.

Several active adapters run in order, as in PEFT: a DoRA adapter rescales the output accumulated before it
(other adapters included), so adapter ``k`` maps ``W_{k−1}`` to ``W_k = f_k ⊙ (W_{k−1} + s_k·B_k·A_k)`` with
``f_k`` from the norm of ``W₀ + s_k·B_k·A_k`` (plain LoRA: ``f_k = 1``). Merging adapter after adapter in
that order is therefore exact, and unmerging divides back, newest first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def weight_norm(weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``‖W + ΔW‖`` per output row, both ``(out, in)`` fp32 -> ``(out,)``."""
    return torch.linalg.norm(weight + delta, dim=1)


def lora_delta(layer, name: str) -> torch.Tensor:
    """``s·B·A`` in fp32, ``(out, in)`` (never the transposed Conv1D layout)."""
    return layer.scaling[name] * layer.factor_product(name).float()  # (out, r)(r, in) -> (out, in)


def init_magnitude(layer, name: str) -> None:
    """``m ← ‖W₀ + s·B·A‖_row`` so the adapter starts as the base (or as W₀ + s·B·A for PiSSA/OLoRA)."""
    with torch.no_grad():
        norm = weight_norm(layer.dense_weight(), lora_delta(layer, name))
    layer.lora_magnitude[name] = nn.Parameter(norm.to(layer.lora_A[name].dtype))


def factor(layer, name: str, weight: torch.Tensor) -> torch.Tensor:
    """``f = m / ‖W + s·B·A‖_row`` with the norm detached, ``(out,)`` fp32."""
    with torch.no_grad():
        norm = weight_norm(weight, lora_delta(layer, name))
    return layer.lora_magnitude[name].float() / norm


def extra_output(layer, name: str, x: torch.Tensor, base_out: torch.Tensor) -> torch.Tensor:
    """What DoRA adds to the base output ``base_out = W₀x + b``: ``(f−1)⊙W₀x + f⊙s·B·A·x``, ``(..., out)``.

    With dropout active in training, ``W₀`` is applied to the dropped-out input as PEFT does.
    """
    weight = layer.dense_weight() if not layer.merged else layer._dense(layer.original_weight())  # W₀: (out, in) fp32
    f = factor(layer, name, weight)
    h = layer.adapter_input(x, name)
    lora_out = layer.factor_forward(h, name)  # (..., in) -> (..., out)
    if layer.dropout_p[name] > 0 and layer.training:
        base_term = F.linear(h, weight.to(h.dtype))  # (..., in) @ (in, out) -> (..., out)
    else:
        bias = getattr(layer.base_layer, "bias", None)
        base_term = base_out - bias if bias is not None else base_out
    f = f.to(lora_out.dtype)
    return ((f - 1).to(base_term.dtype) * base_term).to(lora_out.dtype) + f * lora_out * layer.scaling[name]


def merged_weight(layer, name: str, weight: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """``f ⊙ (W + s·B·A)`` for ``W`` fp32 ``(out, in)`` and ``f: (out,)`` from :func:`factor` of W₀."""
    return f.view(-1, 1) * (weight + lora_delta(layer, name))


def unmerged_weight(layer, name: str, weight: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`merged_weight`: ``W'/f − s·B·A``."""
    return weight / f.view(-1, 1) - lora_delta(layer, name)
