"""AdaLoRA's rank allocation: importance scores per triplet and a cubic budget schedule.

Sensitivity of a parameter entry is ``I = |w·∂L/∂w|``; it is smoothed ``Ī ← β₁Ī + (1−β₁)I`` and its
uncertainty ``Ū ← β₂Ū + (1−β₂)|I − Ī|``; the score is ``s = Ī·Ū``. Triplet ``i`` of a module scores
``s(Λ_i) + mean_j s(Q_ij) + mean_j s(P_ji)``. The total budget (kept triplets over all modules) falls from
``init_r·n`` to ``target_r·n``:

    b(t) = init                                      for t ≤ tinit
    b(t) = target + (init − target)·(1 − (t − tinit)/(T − tfinal − tinit))³
    b(t) = target                                    for t > T − tfinal

Every ``delta_t`` steps in the middle phase (and on every step of the final phase) the lowest-scoring triplets
beyond the budget get ``Λ_i = 0``; in the final phase the last mask is held fixed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lorakit.core.errors import ConfigError
from lorakit.core.model import lora_layers


@dataclass
class AdaLoraConfig:
    """Budget schedule and importance smoothing (names as in PEFT's AdaLoraConfig)."""

    init_r: int = 12
    """Rank every module starts with."""
    target_r: int = 8
    """Average rank per module at the end: the budget is ``target_r × modules`` triplets."""
    tinit: int = 0
    """Steps of warm-up before any pruning."""
    tfinal: int = 0
    """Steps at the end with the final mask held fixed."""
    delta_t: int = 1
    """Re-allocate every ``delta_t`` steps in the middle phase."""
    beta1: float = 0.85
    """EMA factor of the sensitivity."""
    beta2: float = 0.85
    """EMA factor of the uncertainty."""
    orth_reg_weight: float = 0.5
    """Weight of the orthogonality regulariser added to the loss."""
    total_step: int = 100
    """Optimizer steps of the run (the schedule's T)."""

    def __post_init__(self) -> None:
        if not 0 < self.target_r <= self.init_r:
            raise ConfigError(
                f"AdaLoRA needs 0 < target_r ≤ init_r, got target_r={self.target_r}, init_r={self.init_r}"
            )
        if self.tinit + self.tfinal >= self.total_step:
            raise ConfigError(
                f"AdaLoRA needs tinit + tfinal < total_step, got {self.tinit} + {self.tfinal} ≥ {self.total_step}"
            )
        if self.delta_t < 1 or not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1) or self.orth_reg_weight < 0:
            raise ConfigError("AdaLoRA needs delta_t ≥ 1, beta1/beta2 in [0, 1) and orth_reg_weight ≥ 0")


def budget_at(config: AdaLoraConfig, step: int, modules: int) -> tuple[int, bool]:
    """``(budget in triplets, whether to mask at this step)`` for optimizer step ``step`` (0-based)."""
    init, target = config.init_r * modules, config.target_r * modules
    if step <= config.tinit:
        return init, False
    if step > config.total_step - config.tfinal:
        return target, True
    progress = (step - config.tinit) / (config.total_step - config.tfinal - config.tinit)
    return int(target + (init - target) * (1 - progress) ** 3), step % config.delta_t == 0


class RankAllocator:
    """Keeps the importance statistics of adapter ``name`` and masks Λ to the budget."""

    def __init__(self, model: nn.Module, config: AdaLoraConfig, name: str = "default") -> None:
        self.config, self.name = config, name
        self.layers = {m: layer for m, layer in lora_layers(model) if name in getattr(layer, "lora_E", {})}
        if not self.layers:
            raise ConfigError(f"adapter {name!r} has no AdaLoRA (SVD-form) layers; inject it with inject_adalora")
        self.avg_ipt: dict[int, torch.Tensor] = {}
        self.avg_unc: dict[int, torch.Tensor] = {}
        self.kept: dict[str, torch.Tensor] | None = None

    def _params(self):
        for layer in self.layers.values():
            yield from (layer.lora_A[self.name], layer.lora_B[self.name], layer.lora_E[self.name])

    def update_importance(self) -> None:
        """Fold the current gradients into the smoothed sensitivity and uncertainty (call while grads exist)."""
        b1, b2 = self.config.beta1, self.config.beta2
        with torch.no_grad():
            for p in self._params():
                if p.grad is None:
                    continue
                ipt = (p * p.grad).abs().float()
                key = id(p)
                avg = self.avg_ipt.setdefault(key, torch.zeros_like(ipt))
                unc = self.avg_unc.setdefault(key, torch.zeros_like(ipt))
                avg.mul_(b1).add_(ipt, alpha=1 - b1)
                unc.mul_(b2).add_((ipt - avg).abs(), alpha=1 - b2)

    def _score(self, p: torch.Tensor) -> torch.Tensor:
        key = id(p)
        if key not in self.avg_ipt:
            return torch.zeros_like(p, dtype=torch.float32)
        return self.avg_ipt[key] * self.avg_unc[key]

    def triplet_scores(self) -> dict[str, torch.Tensor]:
        """Module -> ``(r,)`` score of each triplet: ``s(Λ_i) + mean s(Q_i,:) + mean s(P_:,i)``."""
        scores = {}
        for mname, layer in self.layers.items():
            Q, P, E = layer.lora_A[self.name], layer.lora_B[self.name], layer.lora_E[self.name]
            scores[mname] = self._score(E) + self._score(Q).mean(dim=1) + self._score(P).mean(dim=0)
        return scores

    def mask_to_budget(self, budget: int) -> None:
        """Zero Λ of the lowest-scoring triplets so that at most ``budget`` remain."""
        scores = self.triplet_scores()
        everything = torch.cat(list(scores.values()))
        excess = everything.numel() - budget
        if excess <= 0:
            self.kept = {m: torch.ones_like(s, dtype=torch.bool) for m, s in scores.items()}
            return
        threshold = torch.kthvalue(everything, excess).values
        self.kept = {m: s > threshold for m, s in scores.items()}
        self.apply_mask()

    def apply_mask(self) -> None:
        """Re-zero pruned Λ entries (the optimizer may have moved them)."""
        if self.kept is None:
            return
        with torch.no_grad():
            for mname, layer in self.layers.items():
                layer.lora_E[self.name].masked_fill_(~self.kept[mname], 0.0)

    def finish(self) -> None:
        """Mask to the target budget (``target_r × modules``): the ranks the adapter is saved with."""
        self.mask_to_budget(self.config.target_r * len(self.layers))

    def step(self, step: int) -> int:
        """After optimizer step ``step`` (0-based): mask as the schedule says; returns the current budget."""
        budget, mask = budget_at(self.config, step, len(self.layers))
        if step > self.config.total_step - self.config.tfinal and self.kept is not None:
            self.apply_mask()
        elif mask:
            self.mask_to_budget(budget)
        return budget
