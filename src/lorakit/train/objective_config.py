"""Config sections of the training objectives beyond plain SFT: ``drift_guard:`` and ``dpo:``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DriftGuardSection(_Section):
    """Keep the adapted model's next-token distributions near the base's where the task does not need a change."""

    weight: float = Field(1.0, ge=0)
    """Weight of KL(base ‖ adapted) on general text, added to the task loss each step (0: off)."""
    data: str = "general"
    """General text: ``general`` (the guard prompts that ship with lorakit, distinct from the eval prompts) or a
    .jsonl/.csv/.parquet file of ``{"prompt"}`` (chat, answered by the base), ``{"messages"}`` or ``{"text"}`` rows."""
    batch_size: int = Field(2, ge=1)
    """General-text sequences per optimizer step (split over processes under DDP)."""
    top_k: int = Field(64, ge=1)
    """Base log-probabilities kept per position (plus the remaining mass as one bucket)."""
    respond_tokens: int = Field(32, ge=0)
    """For ``prompt`` rows, the base's greedy answer of up to this many tokens is part of the guarded text."""
    max_length: int = Field(256, ge=8)
    """Tokens per general-text sequence; longer ones are cut."""
    schedule: Literal["constant", "linear"] = "constant"
    """``constant``: the full weight from step 1; ``linear``: rises from 0 to ``weight`` over the run."""
    batch_weight: float = Field(0.0, ge=0)
    """Weight of the no-extra-data regulariser: KL(base ‖ adapted) over the non-target tokens at each labelled
    position of the training batch, renormalised (costs one more forward per micro-batch; 0: off)."""


class DpoSection(_Section):
    """Preference training (``train.objective: dpo``) with the base, through disabled adapters, as reference."""

    beta: float = Field(0.1, gt=0)
    """Strength of the pull toward the reference (the KL coefficient β)."""
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    """Assumed fraction of flipped labels (conservative DPO); sigmoid loss only."""
    loss_type: Literal["sigmoid", "ipo"] = "sigmoid"
    """``sigmoid``: DPO; ``ipo``: the squared loss of IPO."""
    precompute_reference: bool = False
    """Compute every pair's reference log-probabilities once before training (one forward per pair, no grad)
    instead of a reference forward each step."""
