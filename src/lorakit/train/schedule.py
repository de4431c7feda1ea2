"""Learning-rate schedules: linear warm-up, then cosine, linear or constant.

For optimizer step ``s`` (0-based) of ``total`` with ``W`` warm-up steps the multiplier of the peak rate is
``(s + 1) / W`` while ``s < W``; after it, with ``p = (s - W) / (total - W)`` in [0, 1):
cosine ``½·(1 + cos πp)``, linear ``1 - p``, constant ``1``. The first step never runs at rate 0 and the last
one runs just above 0.
"""

from __future__ import annotations

import math

SCHEDULES = ("cosine", "linear", "constant")


def warmup_steps(total: int, warmup_ratio: float) -> int:
    return int(round(total * warmup_ratio))


def lr_factor(step: int, total: int, warmup: int, kind: str = "cosine") -> float:
    """Multiplier of the peak learning rate at optimizer step ``step``."""
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}")
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if kind == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))
