"""Direct preference optimisation with the base model as the reference, through disabled adapters.

For a pair (prompt ``x``, chosen ``y_w``, rejected ``y_l``) with sequence log-probabilities summed over response
tokens, policy ``π`` (adapters on) and reference ``π_ref`` (the same model inside ``lk.disabled``)::

    h = [log π(y_w|x) − log π_ref(y_w|x)] − [log π(y_l|x) − log π_ref(y_l|x)]
    sigmoid:  loss = −(1 − ε)·log σ(β·h) − ε·log σ(−β·h)          (Rafailov et al. 2023, "Direct Preference
                                                                    Optimization", eq. 7; ε: conservative DPO)
    ipo:      loss = (h − 1/(2β))²                                 (Azar et al. 2023, "A General Theoretical
                                                                    Paradigm to Understand Learning from Human
                                                                    Preferences", eq. 17)

The implicit rewards are ``r_w = β·(log π(y_w|x) − log π_ref(y_w|x))`` and ``r_l`` likewise; the reward margin
is ``r_w − r_l`` and the preference accuracy the fraction of pairs with ``r_w > r_l``. No second copy of the
base is held: the reference pass runs the same weights with every adapter bypassed, under ``no_grad``.
Both forms use log-probabilities summed over the response, as the papers define them (TRL 1.x averages IPO's
log-ratios per token instead, and its sigmoid form has no ``ε``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.core.model import disabled
from lorakit.train.loss import TokenLoss

LOSS_TYPES = ("sigmoid", "ipo")


@dataclass
class PairLosses:
    """Per-pair tensors, each (B,): ``losses``, ``chosen_rewards``, ``rejected_rewards``."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    loss_type: str = "sigmoid",
) -> PairLosses:
    """The DPO (or IPO) loss of each pair from summed log-probabilities, all of shape (B,), in nats.

    Raises ``ValueError`` for an unknown ``loss_type`` (the config validates it before training).
    """
    h = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)  # (B,)
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss type {loss_type!r}; use one of {', '.join(LOSS_TYPES)}")
    chosen_rewards = beta * (policy_chosen - reference_chosen).detach()
    rejected_rewards = beta * (policy_rejected - reference_rejected).detach()
    return PairLosses(losses, chosen_rewards, rejected_rewards)


class DPOObjective(nn.Module):
    """``forward(batch) -> (Σ pair losses, stats)`` for a batch built by :func:`lorakit.data.preference.collate_pairs`.

    ``stats`` are sums over the batch's pairs (the trainer divides by the pairs of the global batch):
    ``reward_margin``, ``reward_accuracy``, ``chosen_logps``, ``rejected_logps``, ``chosen_rewards``,
    ``rejected_rewards``; ``task_loss`` equals the loss (what evaluation reports).
    """

    def __init__(self, model: nn.Module, beta: float, label_smoothing: float = 0.0, loss_type: str = "sigmoid") -> None:
        super().__init__()
        self.model = model
        self.tokens = TokenLoss(model)
        self.beta, self.label_smoothing, self.loss_type = beta, label_smoothing, loss_type

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        reference_logps: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pairs = input_ids.shape[0] // 2
        policy = -self.tokens.per_sequence(input_ids, attention_mask, labels)  # (2B,) summed response log-probs
        if reference_logps is None:
            reference_logps = reference_logprobs(self.tokens, input_ids, attention_mask, labels)
        reference = reference_logps.to(policy.device, policy.dtype)
        out = dpo_loss(
            policy[:pairs],
            policy[pairs:],
            reference[:pairs],
            reference[pairs:],
            beta=self.beta,
            label_smoothing=self.label_smoothing,
            loss_type=self.loss_type,
        )
        loss = out.losses.sum()
        margin = out.chosen_rewards - out.rejected_rewards
        stats = {
            "task_loss": loss.detach(),
            "reward_margin": margin.sum(),
            "reward_accuracy": (margin > 0).float().sum(),
            "chosen_rewards": out.chosen_rewards.sum(),
            "rejected_rewards": out.rejected_rewards.sum(),
            "chosen_logps": policy[:pairs].detach().sum(),
            "rejected_logps": policy[pairs:].detach().sum(),
        }
        return loss, stats


@torch.no_grad()
def reference_logprobs(
    tokens: TokenLoss, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Summed response log-probabilities (B,) under the base: the same model with every adapter bypassed."""
    with disabled(tokens.model):
        return -tokens.per_sequence(input_ids, attention_mask, labels)
