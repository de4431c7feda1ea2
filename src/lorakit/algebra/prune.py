"""Element-wise merging of task updates ``τᵢ = ΔWᵢ``: magnitude pruning, TIES and DARE.

- ``magnitude_prune``: keep the ``density`` fraction of largest-magnitude entries of each τᵢ, then ``Σ wᵢ τᵢ``.
- ``ties`` (Yadav et al., 2023): trim each τᵢ by magnitude; elect a sign per entry from the trimmed τᵢ
  (``total``: sign of Σ τᵢ; ``frequency``: sign of Σ sign(τᵢ)); average the weighted entries ``wᵢ τᵢ`` that
  agree with the elected sign over the number of agreeing tasks (the disjoint mean).
- ``dare_linear`` (Yu et al., 2023): keep each entry with probability ``density`` and rescale by ``1/density``,
  then ``Σ wᵢ τᵢ``; ``dare_ties``: the same random drop followed by TIES' sign election and disjoint mean.

The sign is elected on the unweighted trimmed updates and the weights enter the disjoint mean, as in
PEFT's ``ties_svd``/``dare_ties_svd``, so the results are the same for the same inputs.
Random drops draw from a ``torch.Generator`` seeded per module, so results are reproducible under a seed.
"""

from __future__ import annotations

import torch

ELEMENTWISE_METHODS = ("ties", "dare_linear", "dare_ties", "magnitude_prune")
SIGN_METHODS = ("total", "frequency")


def keep_largest(tau: torch.Tensor, density: float) -> torch.Tensor:
    """τ with all but its ``⌊density·numel⌋`` largest-magnitude entries set to zero."""
    k = int(density * tau.numel())
    mask = torch.zeros(tau.numel(), dtype=tau.dtype)
    mask[torch.topk(tau.abs().reshape(-1), k=k).indices] = 1
    return tau * mask.reshape(tau.shape)


def drop_random(tau: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """DARE: keep each entry with probability ``density`` and rescale the kept ones by ``1/density``."""
    mask = torch.rand(tau.shape, generator=generator, dtype=tau.dtype) < density
    return tau * mask / density


def disjoint_mean(taus: torch.Tensor, weights: torch.Tensor, sign_method: str) -> torch.Tensor:
    """TIES' elect-and-merge over stacked ``taus: (n, out, in)`` with ``weights: (n,)``."""
    signs = taus.sign()
    votes = taus.sum(0) if sign_method == "total" else signs.sum(0)  # (out, in)
    elected = torch.where(votes >= 0, 1.0, -1.0).to(taus.dtype)
    agree = (signs == elected).to(taus.dtype)  # (n, out, in)
    weighted = taus * weights.reshape(-1, 1, 1).to(taus.dtype)
    return (weighted * agree).sum(0) / agree.sum(0).clamp(min=1.0)


def merge_elementwise(
    method: str,
    taus: list[torch.Tensor],
    weights: list[float],
    density: float,
    sign_method: str = "total",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One module's merged update by ``method`` (one of :data:`ELEMENTWISE_METHODS`)."""
    w = torch.tensor(weights, dtype=taus[0].dtype)
    if method in ("ties", "magnitude_prune"):
        kept = torch.stack([keep_largest(t, density) for t in taus])  # (n, out, in)
    else:
        kept = torch.stack([drop_random(t, density, generator) for t in taus])
    if method in ("ties", "dare_ties"):
        return disjoint_mean(kept, w, sign_method)
    return (kept * w.reshape(-1, 1, 1)).sum(0)
