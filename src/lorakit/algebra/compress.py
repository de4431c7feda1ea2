"""Compress an adapter by re-factoring each module's ``ΔW = s·B·A`` at a smaller rank.

Each module keeps its top-k singular directions, ``ΔW_k = U_k Σ_k V_kᵀ`` (the best rank-k approximation,
Eckart–Young), written as balanced factors ``B = U_k √Σ_k``, ``A = √Σ_k V_kᵀ``. With ``energy`` the rank is the
smallest k with ``Σ_{i≤k} σᵢ² ≥ energy · Σ σᵢ²`` per module (so ranks differ: they go into ``rank_pattern``);
with ``rank`` it is ``min(rank, r)``. The relative error of a module is ``‖ΔW − ΔW_k‖_F / ‖ΔW‖_F =
√(1 − kept energy)``. The output is an ordinary adapter: PEFT and lorakit load it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lorakit.algebra import writer
from lorakit.algebra.factors import Adapter, LowRank, load, parent_record, reject_dora
from lorakit.algebra.spectrum import factor_svd, rank_for_energy
from lorakit.core.errors import ConfigError
from lorakit.core.files import atomic
from lorakit.core.files.peft_format import WEIGHTS_FILE


@dataclass
class ModuleCompression:
    module: str
    rank_before: int
    rank_after: int
    kept_energy: float
    relative_error: float


@dataclass
class CompressReport:
    """Per-module ranks and errors, and the weights file's size before and after."""

    path: Path
    modules: list[ModuleCompression]
    bytes_before: int
    bytes_after: int
    kl: float | None = None

    @property
    def max_relative_error(self) -> float:
        return max(m.relative_error for m in self.modules)

    @property
    def parameters(self) -> tuple[int, int]:
        """Rank sums before and after (parameters scale with them)."""
        return sum(m.rank_before for m in self.modules), sum(m.rank_after for m in self.modules)


def compress(
    source: str | Path | Adapter,
    out: str | Path,
    *,
    energy: float | None = None,
    rank: int | None = None,
    overwrite: bool = False,
) -> CompressReport:
    """Re-factor every module of ``source`` to keep ``energy`` of its ΔW (or to at most ``rank``); write to ``out``.

    ``out`` is written atomically and must be absent or empty unless ``overwrite``, which replaces what it holds.

    Raises:
        ConfigError: not exactly one of ``energy`` (a fraction in (0, 1]) and ``rank`` (a positive integer).
        OutputExistsError: ``out`` is a file or a non-empty directory and ``overwrite`` is false (nothing is
            read or written).
    """
    if (energy is None) == (rank is None):
        raise ConfigError("give exactly one of energy (e.g. 0.99) or rank (e.g. 8)")
    if energy is not None and not (isinstance(energy, (int, float)) and 0.0 < energy <= 1.0):
        raise ConfigError(f"energy must be a fraction in (0, 1], got {energy!r}")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ConfigError(f"rank must be a positive integer, got {rank!r}")
    atomic.check_output(out, overwrite=overwrite)
    adapter = source if isinstance(source, Adapter) else load(source)
    reject_dora(adapter, "compress")
    bytes_before = (adapter.path / WEIGHTS_FILE).stat().st_size  # before writing: ``out`` may be the source
    modules: dict[str, LowRank] = {}
    report = []
    for name, m in adapter.modules.items():
        U, S, V = factor_svd(m.B, m.A, m.scale)  # ΔW = U diag(S) Vᵀ
        k = rank_for_energy(S, energy) if energy is not None else min(rank, S.numel())
        k = max(1, min(k, S.numel()))
        root = S[:k].sqrt()
        modules[name] = LowRank(root[:, None] * V[:, :k].T, U[:, :k] * root, 1.0, m.kind)  # (k, in), (out, k)
        total = float((S**2).sum())
        kept = float((S[:k] ** 2).sum()) / total if total > 0 else 1.0
        report.append(ModuleCompression(name, m.rank, k, kept, math.sqrt(max(0.0, 1.0 - kept))))
    params = {"energy": energy} if energy is not None else {"rank": rank}
    lineage = {"method": "compress", "params": params, "parents": [parent_record(adapter, 1.0)]}
    path = writer.write(
        out, modules, [adapter], lineage, extras_from=adapter if adapter.extras else None, dtype=adapter.dtype
    )
    return CompressReport(path, report, bytes_before, (path / WEIGHTS_FILE).stat().st_size)


def output_kl(
    model: nn.Module,
    original: str | Path,
    compressed: str | Path,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> float:
    """Mean over tokens of ``KL(p_original ‖ p_compressed)`` of the next-token distributions on ``input_ids``.

    Both adapters are loaded into ``model`` for the measurement and removed again afterwards (a model that
    had no adapters before is unloaded back to its plain modules).
    """
    from lorakit.core.files import load_adapter
    from lorakit.core.merge import unload
    from lorakit.core.model import adapter_names, delete_adapter, set_active

    had_adapters = bool(adapter_names(model))
    load_adapter(model, original, name="kl_original")
    try:
        load_adapter(model, compressed, name="kl_compressed")
        try:
            log_probs = {}
            with torch.no_grad():
                for name in ("kl_original", "kl_compressed"):
                    set_active(model, name)
                    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()  # (b, t, vocab)
                    log_probs[name] = torch.log_softmax(logits, dim=-1)
            p_log, q_log = log_probs["kl_original"], log_probs["kl_compressed"]
            per_token = (p_log.exp() * (p_log - q_log)).sum(-1)  # (b, t)
            if attention_mask is not None:
                return float((per_token * attention_mask).sum() / attention_mask.sum())
            return float(per_token.mean())
        finally:
            delete_adapter(model, "kl_compressed")
    finally:
        delete_adapter(model, "kl_original")
        if not had_adapters:
            unload(model)
