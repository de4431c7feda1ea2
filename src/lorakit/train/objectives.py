"""The objective a run minimises, chosen by ``train.objective``: what a batch looks like and what its loss is.

Every objective is an ``nn.Module`` whose ``forward(**batch)`` returns ``(loss_sum, stats)``: the loss summed
over the batch's units (labelled tokens for ``sft``, pairs for ``dpo``) and a dict of summed statistics, so the
trainer can divide both by the units of the whole global batch. ``stats["task_loss"]`` is what evaluation
reports as ``eval_loss``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from lorakit.data import collate
from lorakit.data.preference import PreferencePair, collate_pairs
from lorakit.train.config import RunConfig
from lorakit.train.dpo import DPOObjective, reference_logprobs
from lorakit.train.drift_guard import GuardedTokenLoss
from lorakit.train.loss import TokenLoss


class SFTObjective(TokenLoss):
    """Next-token cross-entropy of the labelled tokens, as :class:`TokenLoss`, with the stats dict."""

    def forward(self, input_ids, attention_mask, labels):
        loss = super().forward(input_ids, attention_mask, labels)
        return loss, {"task_loss": loss.detach()}


def build_objective(config: RunConfig, model: nn.Module) -> nn.Module:
    """The objective module of ``config`` over ``model``."""
    if config.train.objective == "dpo":
        section = config.dpo
        return DPOObjective(model, section.beta, section.label_smoothing, section.loss_type)
    guard = config.drift_guard
    if guard is not None and guard.batch_weight > 0:
        return GuardedTokenLoss(model, guard.batch_weight)
    return SFTObjective(model)


def batch_collator(config: RunConfig) -> Callable[[list, int], dict[str, torch.Tensor]]:
    """How a list of examples becomes a batch for this objective."""
    return collate_pairs if config.train.objective == "dpo" else collate


@torch.no_grad()
def precompute_reference(
    objective: DPOObjective,
    pairs: list[PreferencePair],
    pad_id: int,
    batch_size: int,
    device: torch.device,
    autocast: Callable,
) -> None:
    """Store the base's ``(log p(chosen), log p(rejected))`` on every pair (adapters disabled, one pass)."""
    was_training = objective.model.training
    objective.model.eval()
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate_pairs(chunk, pad_id).items() if k != "reference_logps"}
        with autocast():
            logps = reference_logprobs(objective.tokens, **batch).double().cpu()  # (2B,)
        for i, pair in enumerate(chunk):
            pair.reference = (float(logps[i]), float(logps[len(chunk) + i]))
    objective.model.train(was_training)
