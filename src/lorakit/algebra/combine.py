"""Blend several adapters into one: ``cat``, ``linear``, ``svd`` and the element-wise ``ties``, ``dare_*``,
``magnitude_prune``. With ``ΔWᵢ = sᵢ·Bᵢ·Aᵢ`` and weights ``wᵢ``:

- ``cat``: ``A = [w₁s₁A₁; w₂s₂A₂; …]``, ``B = [B₁ B₂ …]`` so ``B·A = Σ wᵢΔWᵢ`` exactly, at rank ``Σ rᵢ``.
- ``linear``: ``A = Σ ±√|wᵢsᵢ|·Aᵢ``, ``B = Σ √|wᵢsᵢ|·Bᵢ`` (PEFT's definition; equal ranks). Cheap, but
  ``B·A`` carries cross terms ``Bᵢ·Aⱼ``: an approximation of ``Σ wᵢΔWᵢ``, exact only for one adapter.
- ``svd``: the exact ``Σ wᵢΔWᵢ`` (as the ``cat`` factors, never formed densely) truncated to its best rank-k
  approximation (Eckart–Young) by :func:`~lorakit.algebra.spectrum.factor_svd`.
- ``ties``, ``dare_linear``, ``dare_ties``, ``magnitude_prune``: act entry-wise on the dense ΔWᵢ
  (:mod:`lorakit.algebra.prune`), then truncate to rank k by SVD (PEFT calls these ``*_svd``).

A module missing from some adapters counts as a zero update there; the output says so.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lorakit.algebra import writer
from lorakit.algebra.factors import Adapter, LowRank, load, parent_record, reject_dora
from lorakit.algebra.prune import ELEMENTWISE_METHODS, SIGN_METHODS, merge_elementwise
from lorakit.algebra.spectrum import factor_svd
from lorakit.core.errors import AdapterMismatchError, BaseMismatchError, ConfigError
from lorakit.core.files import atomic

METHODS = ("cat", "linear", "svd") + ELEMENTWISE_METHODS


@dataclass
class CombineResult:
    """Where the combined adapter went, its rank per module, the energy its truncation kept, and notes."""

    path: Path
    method: str
    ranks: dict[str, int]
    kept_energy: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def combine(
    sources: list[str | Path | Adapter],
    out: str | Path,
    *,
    weights: list[float] | None = None,
    method: str = "cat",
    rank: int | None = None,
    density: float | None = None,
    seed: int = 0,
    sign_method: str = "total",
    overwrite: bool = False,
) -> CombineResult:
    """Combine adapters ``sources`` with ``weights`` (default 1 each) by ``method`` into a new adapter at ``out``.

    ``out`` is written atomically (a staging directory renamed into place) and must be absent or empty unless
    ``overwrite``, which replaces what it holds.

    Raises:
        OutputExistsError: ``out`` is a file or a non-empty directory and ``overwrite`` is false (checked before
            any adapter is read; nothing is written).
    """
    atomic.check_output(out, overwrite=overwrite)
    adapters = [s if isinstance(s, Adapter) else load(s) for s in sources]
    weights = _check_arguments(adapters, weights, method, rank, density, sign_method)
    _check_compatible(adapters, method)
    names = list(dict.fromkeys(name for a in adapters for name in a.modules))
    notes = _missing_notes(adapters, names)
    kept: dict[str, float] = {}
    modules: dict[str, LowRank] = {}
    for name in names:
        present = [(a.modules[name], w) for a, w in zip(adapters, weights) if name in a.modules]
        if method == "cat":
            modules[name] = _cat(present)
        elif method == "linear":
            modules[name] = _linear(present)
        else:
            k = rank or max(m.rank for m, _ in present)
            if method == "svd":
                summed = _cat(present)
                U, S, V = factor_svd(summed.B, summed.A, summed.scale)
            else:
                dense = merge_elementwise(
                    method,
                    [m.dense() for m, _ in present],
                    [w for _, w in present],
                    density,
                    sign_method,
                    _generator(seed, name),
                )
                U, S, Vh = torch.linalg.svd(dense, full_matrices=False)  # (out, q), (q,), (q, in)
                V = Vh.T
            modules[name], kept[name] = _truncate(U, S, V, k, present[0][0].kind)
    params = {"weights": weights}
    if method not in ("cat", "linear"):
        params["rank"] = rank
    if method in ELEMENTWISE_METHODS:
        params.update(density=density, seed=seed, sign_method=sign_method)
    lineage = {"method": method, "params": params, "parents": [parent_record(a, w) for a, w in zip(adapters, weights)]}
    extras_from = next((a for a in adapters if a.extras), None)
    path = writer.write(out, modules, adapters, lineage, extras_from=extras_from, notes=notes)
    return CombineResult(path, method, {n: m.rank for n, m in modules.items()}, kept, notes)


def _cat(present: list[tuple[LowRank, float]]) -> LowRank:
    A = torch.cat([m.A.float() * (w * m.scale) for m, w in present], dim=0)  # (Σr, in)
    B = torch.cat([m.B.float() for m, _ in present], dim=1)  # (out, Σr)
    return LowRank(A, B, 1.0, present[0][0].kind)


def _linear(present: list[tuple[LowRank, float]]) -> LowRank:
    A = sum(math.copysign(math.sqrt(abs(w * m.scale)), w * m.scale) * m.A.float() for m, w in present)  # (r, in)
    B = sum(math.sqrt(abs(w * m.scale)) * m.B.float() for m, w in present)  # (out, r)
    return LowRank(A, B, 1.0, present[0][0].kind)


def _truncate(U: torch.Tensor, S: torch.Tensor, V: torch.Tensor, k: int, kind: str) -> tuple[LowRank, float]:
    """Best rank-k factors ``B = U_k √S_k``, ``A = √S_k V_kᵀ`` (balanced) and the energy fraction they keep."""
    k = max(1, min(k, S.numel()))
    root = S[:k].sqrt()
    total = float((S.double() ** 2).sum())
    kept = float((S[:k].double() ** 2).sum()) / total if total > 0 else 1.0
    return LowRank((root[:, None] * V[:, :k].T).float(), (U[:, :k] * root).float(), 1.0, kind), kept


def _generator(seed: int, module: str) -> torch.Generator:
    """A generator seeded by ``seed`` and the module's name: each module's draw does not depend on the others."""
    digest = hashlib.sha256(f"{seed}:{module}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def _check_arguments(
    adapters: list[Adapter],
    weights: list[float] | None,
    method: str,
    rank: int | None,
    density: float | None,
    sign_method: str,
) -> list[float]:
    if not adapters:
        raise ConfigError("combine needs at least one adapter")
    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    weights = [1.0] * len(adapters) if weights is None else [float(w) for w in weights]
    if len(weights) != len(adapters):
        raise ConfigError(f"got {len(weights)} weight(s) for {len(adapters)} adapter(s); give one weight per adapter")
    if not all(math.isfinite(w) for w in weights):
        raise ConfigError(f"weights must be finite numbers, got {weights}")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ConfigError(f"rank must be a positive integer, got {rank!r}")
    if rank is not None and method in ("cat", "linear"):
        raise ConfigError(
            f"{method} has no rank to choose (cat: Σ rᵢ, linear: the adapters' r); use --method svd to set a rank"
        )
    if method in ELEMENTWISE_METHODS:
        if density is None or not 0.0 < density <= 1.0:
            raise ConfigError(f"{method} needs a density in (0, 1] (the fraction of entries kept), got {density!r}")
    elif density is not None:
        raise ConfigError(f"density applies to {', '.join(ELEMENTWISE_METHODS)}, not {method}")
    if sign_method not in SIGN_METHODS:
        raise ConfigError(f"sign method must be one of {', '.join(SIGN_METHODS)}, got {sign_method!r}")
    return weights


def _check_compatible(adapters: list[Adapter], method: str) -> None:
    """Same base, same module shapes, equal ranks for ``linear``, no DoRA, saved modules from one adapter only."""
    for a in adapters:
        reject_dora(a, "combine")
    known = [(a, a.files.base_fingerprint) for a in adapters if a.files.base_fingerprint]
    for a, fp in known[1:]:
        first, first_fp = known[0]
        if fp != first_fp:
            raise BaseMismatchError(
                f"adapters were trained on different bases: {first.path} on "
                f"{_base_name(first)} (fingerprint {first_fp[:12]}), {a.path} on "
                f"{_base_name(a)} (fingerprint {fp[:12]}); combine adapters of one base"
            )
    with_extras = [a for a in adapters if a.extras]
    if len(with_extras) > 1:
        raise ConfigError(
            f"{with_extras[0].path} and {with_extras[1].path} both train whole modules or biases "
            "(modules_to_save / bias), which cannot be blended; combine adapters without them"
        )
    seen: dict[str, tuple[Adapter, LowRank]] = {}
    for a in adapters:
        for name, m in a.modules.items():
            if name not in seen:
                seen[name] = (a, m)
                continue
            other, om = seen[name]
            if m.shape != om.shape or m.kind != om.kind:
                raise AdapterMismatchError(
                    f"module {name} is {m.kind} {m.shape} in {a.path} but {om.kind} {om.shape} "
                    f"in {other.path}; these adapters belong to different base models"
                )
            if method == "linear" and m.rank != om.rank:
                raise ConfigError(
                    f"linear needs equal ranks, but module {name} has rank {om.rank} in {other.path} and "
                    f"{m.rank} in {a.path}; use --method cat (exact, rank Σ rᵢ) or svd (rank k)"
                )


def _base_name(adapter: Adapter) -> str:
    return repr(adapter.files.meta.get("base", {}).get("name_or_path", "?"))


def _missing_notes(adapters: list[Adapter], names: list[str]) -> list[str]:
    notes = []
    for a in adapters:
        missing = [n for n in names if n not in a.modules]
        if missing:
            notes.append(f"{len(missing)} module(s) not in {a.path} count as a zero update there (first: {missing[0]})")
    return notes
