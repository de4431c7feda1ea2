"""PiSSA and OLoRA: adapters that start on W₀'s principal directions, while W₀ keeps the residual.

With ``s`` the adapter's scale and ``W₀: (out, in)``:

- PiSSA: ``W₀ = U·S·Vᵀ``; ``A = √(S_r/s)·V_rᵀ``, ``B = U_r·√(S_r/s)``, so ``s·B·A = U_r·S_r·V_rᵀ`` is the best
  rank-r part of W₀. ``pissa_niter_K`` gets ``U_r, S_r, V_r`` from a randomised SVD with K subspace
  iterations (``torch.svd_lowrank``): seconds instead of minutes on large layers.
- OLoRA: ``W₀ = Q·R``; ``B = Q[:, :r]``, ``A = R[:r]``.

Both then set ``W_res = W₀ − s·B₀·A₀`` so the model is unchanged at step 0. For QLoRA, initialise on the
float base and quantise afterwards: the residual, stripped of the largest directions, rounds with less error.
After training, ``W_res + s·B·A = W₀ + s·(B·A − B₀·A₀) = W₀ + s·[B, −B₀]·[A; A₀]``: a plain LoRA of rank 2r with the
same scale against the untouched W₀ (:func:`plain_factors`), which is how it is saved, as PEFT converts it, so it loads
on any copy of the original base.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from lorakit.core.errors import ConfigError

_NITER = re.compile(r"^pissa_niter_(\d+)$")


def principal_factors(weight: torch.Tensor, r: int, scale: float, init: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A: (r, in), B: (out, r))`` in fp32 for ``init`` (``pissa``, ``pissa_niter_K``, ``olora``)
    of ``weight: (out, in)``.
    """
    out_features, in_features = weight.shape
    if r > min(out_features, in_features):
        raise ConfigError(
            f"init={init} needs r ≤ min(out, in) = {min(out_features, in_features)} for a weight of shape "
            f"{tuple(weight.shape)}; got r={r}"
        )
    if init == "olora":
        Q, R = torch.linalg.qr(weight)  # (out, k) (k, in), k = min(out, in)
        return R[:r].contiguous(), Q[:, :r].contiguous()
    match = _NITER.match(init)
    if match:
        U, S, V = torch.svd_lowrank(weight, q=r, niter=int(match.group(1)))  # (out, r) (r,) (in, r)
        Vh = V.T
    elif init == "pissa":
        U, S, Vh = torch.linalg.svd(weight, full_matrices=False)  # (out, k) (k,) (k, in)
        U, S, Vh = U[:, :r], S[:r], Vh[:r]
    else:
        raise ConfigError(f"init must be pissa, pissa_niter_K or olora here, got {init!r}")
    root = torch.sqrt(S / scale)  # (r,)
    return root.view(-1, 1) * Vh, U * root.view(1, -1)  # (r, in), (out, r)


def principal_init(layer, name: str, init: str) -> None:
    """Initialise ``layer``'s adapter ``name`` with :func:`principal_factors` and leave the residual in W₀.

    The initial factors are kept frozen (``lora_A0``/``lora_B0``) so the adapter can be saved against W₀.
    """
    if layer.is_quantized():
        raise ConfigError(
            f"init={init} must start from the float weights: inject on the float base, then quantise it "
            "(lorakit.core.quant.quantize_model), so the residual is what gets rounded"
        )
    weight = layer.dense_weight()  # (out, in) fp32
    scale = layer.scaling[name]
    A, B = principal_factors(weight, layer.rank(name), scale, init)
    residual = weight - scale * (B @ A)  # (out, r)(r, in) -> (out, in)
    layer.write_weight(residual.T if layer.fan_in_fan_out else residual)
    dtype = layer.lora_A[name].dtype
    with torch.no_grad():
        layer.lora_A[name].copy_(A.to(dtype))
        layer.lora_B[name].copy_(B.to(dtype))
    layer.lora_A0[name] = nn.Parameter(A.to(dtype), requires_grad=False)
    layer.lora_B0[name] = nn.Parameter(B.to(dtype), requires_grad=False)


def plain_factors(layer, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A', B')`` of a plain LoRA against the original W₀ with the same scale: ``[A; A₀]`` and ``[B, −B₀]``."""
    A, B = layer.lora_A[name].detach(), layer.lora_B[name].detach()
    A0, B0 = layer.lora_A0[name].to(A.dtype), layer.lora_B0[name].to(B.dtype)
    return torch.cat([A, A0], dim=0), torch.cat([B, -B0], dim=1)  # (2r, in), (out, 2r)
