"""AdaLoRA: SVD-form adapters ``ΔW = s·P·diag(Λ)·Q`` whose rank budget is spent where importance is highest.

``svd.py`` injects the adapters and holds the orthogonality regulariser; ``allocator.py`` scores triplets and
masks the least important ones down a cubic budget schedule. Saving writes a plain LoRA with per-module ranks.
"""

from lorakit.adalora.allocator import AdaLoraConfig, RankAllocator, budget_at
from lorakit.adalora.svd import inject_adalora, kept_ranks, orthogonality_penalty

__all__ = ["AdaLoraConfig", "RankAllocator", "budget_at", "inject_adalora", "kept_ranks", "orthogonality_penalty"]
