"""AdaLoRA in the training loop: the orthogonality regulariser in the loss and rank allocation at each step."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from lorakit.core.layers.variants.adalora import kept_ranks, orthogonality_penalty
from lorakit.train.adalora_budget import AdaLoraConfig, RankAllocator
from lorakit.train.callbacks import Callback

if TYPE_CHECKING:
    from lorakit.train.trainer import Trainer


class AdaLoraCallback(Callback):
    """Adds ``orth_reg_weight · R(P, Q)`` to each step's loss, folds the step's gradients into the importance
    scores before the optimizer step, masks Λ to the scheduled budget after it, and masks to the target budget
    after the last step (so the saved adapter respects it)."""

    def __init__(self, config: AdaLoraConfig) -> None:
        self.config = config

    def on_train_begin(self, trainer: "Trainer") -> None:
        self.allocator = RankAllocator(trainer.model, self.config, trainer.adapter)

    def loss_term(self, trainer: "Trainer") -> torch.Tensor | None:
        return self.config.orth_reg_weight * orthogonality_penalty(trainer.model, trainer.adapter)

    def on_before_optimizer_step(self, trainer: "Trainer") -> None:
        self.allocator.update_importance()

    def on_step_end(self, trainer: "Trainer", metrics: dict[str, Any]) -> None:
        metrics["adalora_budget"] = self.allocator.step(metrics["step"] - 1)
        if metrics["step"] >= trainer.config.train.max_steps:
            self.allocator.finish()
            metrics["adalora_budget"] = sum(kept_ranks(trainer.model, trainer.adapter).values())


class AdaLoraSection(BaseModel):
    """``adalora:`` in the training config; the run's ``train.max_steps`` is the schedule's length."""

    model_config = ConfigDict(extra="forbid")

    init_r: int = Field(12, ge=1)
    """Rank every module starts with."""
    target_r: int = Field(8, ge=1)
    """Average rank per module at the end (budget = target_r × modules)."""
    tinit: int = Field(0, ge=0)
    """Warm-up steps before pruning."""
    tfinal: int = Field(0, ge=0)
    """Final steps with the mask held fixed."""
    delta_t: int = Field(1, ge=1)
    """Re-allocate every delta_t steps."""
    beta1: float = Field(0.85, ge=0, lt=1)
    """EMA factor of the sensitivity."""
    beta2: float = Field(0.85, ge=0, lt=1)
    """EMA factor of the uncertainty."""
    orth_reg_weight: float = Field(0.5, ge=0)
    """Weight of the orthogonality regulariser."""

    def allocator_config(self, total_step: int) -> AdaLoraConfig:
        return AdaLoraConfig(**self.model_dump(), total_step=total_step)
