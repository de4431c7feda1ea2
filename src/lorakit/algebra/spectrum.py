"""The spectrum of an adapter: singular values of every module's ``ΔW = s·B·A`` without forming ΔW.

With thin QR factorisations ``B = Q_B R_B`` and ``Aᵀ = Q_A R_A``::

    ΔW = s · Q_B (R_B R_Aᵀ) Q_Aᵀ,      s · R_B R_Aᵀ = U_c Σ V_cᵀ   (an r×r SVD)
    ΔW = (Q_B U_c) Σ (Q_A V_c)ᵀ

so the singular values of the ``out × in`` matrix come from an ``r × r`` one, in O(r²·(out+in)) work.
Energy is the squared Frobenius norm: the top-k directions keep ``Σ_{i≤k} σᵢ² / Σ σᵢ²`` of it.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from lorakit.algebra.factors import Adapter, LowRank, load
from lorakit.core.targeting import layer_index

ENERGY_LEVELS = (0.9, 0.99)
KIND_ORDER = ("q", "k", "v", "o", "gate", "up", "down")


def factor_svd(B: torch.Tensor, A: torch.Tensor, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD ``scale·B·A = U diag(S) Vᵀ`` in float64 via QR of B and Aᵀ;
    ``U: (out, q)``, ``S: (q,)``, ``V: (in, q)``.
    """
    QB, RB = torch.linalg.qr(B.double())  # (out, q), (q, r)
    QA, RA = torch.linalg.qr(A.double().T)  # (in, q'), (q', r)
    Uc, S, Vch = torch.linalg.svd(scale * (RB @ RA.T), full_matrices=False)  # (q, r) @ (r, q') -> (q, q')
    return QB @ Uc, S, QA @ Vch.T  # (out, q) @ (q, k); (in, q') @ (q', k)


def singular_values(module: LowRank) -> torch.Tensor:
    return factor_svd(module.B, module.A, module.scale)[1]


def rank_for_energy(S: torch.Tensor, energy: float) -> int:
    """The smallest k whose top-k singular values keep at least ``energy`` of ``Σσ²`` (0 for a zero update)."""
    squares = S.double() ** 2
    total = squares.sum()
    if total == 0:
        return 0
    kept = torch.cumsum(squares, 0) / total
    return min(int(torch.searchsorted(kept, torch.tensor(energy, dtype=kept.dtype)).item()) + 1, S.numel())


@dataclass
class ModuleSpectrum:
    """What one module's update looks like: its size, its singular values and how concentrated they are."""

    module: str
    kind: str
    layer: int | None
    rank: int
    scale: float
    shape: tuple[int, int]
    frobenius: float
    singular_values: list[float]
    effective_rank: dict[str, int]
    stable_rank: float
    suggested_rank: int

    @property
    def energy(self) -> list[float]:
        """Cumulative energy fraction kept by the top 1, 2, … directions."""
        squares = torch.tensor(self.singular_values, dtype=torch.float64) ** 2
        total = squares.sum()
        return (torch.cumsum(squares, 0) / total).tolist() if total > 0 else [0.0] * len(self.singular_values)


@dataclass
class Group:
    """Totals over a group of modules (one layer, or one kind of projection)."""

    name: str
    modules: int
    frobenius: float
    mean_effective_rank: dict[str, float]
    rank: int
    suggested_rank: int


@dataclass
class Spectrum:
    """An adapter's spectrum: per module, by layer, by module kind, and overall."""

    path: str
    suggest_energy: float
    modules: list[ModuleSpectrum]
    by_layer: list[Group] = field(default_factory=list)
    by_kind: list[Group] = field(default_factory=list)

    @property
    def total_frobenius(self) -> float:
        return sum(m.frobenius**2 for m in self.modules) ** 0.5

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["total_frobenius"] = self.total_frobenius
        return data


def module_kind(module: str) -> str:
    """``model.layers.3.self_attn.q_proj`` -> ``q``; other names keep their last part."""
    leaf = module.rsplit(".", 1)[-1]
    return re.sub(r"_proj$", "", leaf)


def module_spectrum(name: str, module: LowRank, suggest_energy: float) -> ModuleSpectrum:
    S = singular_values(module)
    frobenius = float(S.norm())
    top = float(S[0]) if S.numel() else 0.0
    return ModuleSpectrum(
        module=name,
        kind=module_kind(name),
        layer=layer_index(name, None),
        rank=module.rank,
        scale=module.scale,
        shape=module.shape,
        frobenius=frobenius,
        singular_values=S.tolist(),
        effective_rank={f"{e:g}": rank_for_energy(S, e) for e in ENERGY_LEVELS},
        stable_rank=frobenius**2 / top**2 if top > 0 else 0.0,
        suggested_rank=max(rank_for_energy(S, suggest_energy), 1),
    )


def _group(name: str, members: list[ModuleSpectrum]) -> Group:
    levels = members[0].effective_rank.keys()
    return Group(
        name=name,
        modules=len(members),
        frobenius=sum(m.frobenius**2 for m in members) ** 0.5,
        mean_effective_rank={e: sum(m.effective_rank[e] for m in members) / len(members) for e in levels},
        rank=max(m.rank for m in members),
        suggested_rank=max(m.suggested_rank for m in members),
    )


def inspect(source: str | Adapter, suggest_energy: float = 0.99) -> Spectrum:
    """Spectrum of every module of an adapter, grouped by layer and by kind;
    ``suggested_rank`` keeps ``suggest_energy``.
    """
    adapter = source if isinstance(source, Adapter) else load(source)
    modules = [module_spectrum(n, m, suggest_energy) for n, m in adapter.modules.items()]
    modules.sort(key=lambda m: (m.layer if m.layer is not None else -1, m.module))
    layers = sorted({m.layer for m in modules if m.layer is not None})
    kinds = sorted(
        {m.kind for m in modules}, key=lambda k: (KIND_ORDER.index(k) if k in KIND_ORDER else len(KIND_ORDER), k)
    )
    return Spectrum(
        path=str(adapter.path),
        suggest_energy=suggest_energy,
        modules=modules,
        by_layer=[_group(str(i), [m for m in modules if m.layer == i]) for i in layers],
        by_kind=[_group(k, [m for m in modules if m.kind == k]) for k in kinds],
    )
