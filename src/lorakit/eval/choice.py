"""Multiple choice by log-likelihood: the model picks the option it finds most probable after the question."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from lorakit.eval.generate import Prompt, pad_id
from lorakit.eval.scoring import continuation_ids, token_logprobs


def choice_logprobs(
    model: nn.Module,
    tokenizer,
    questions: Sequence[Prompt],
    choices: Sequence[Sequence[str]],
    *,
    batch_size: int = 8,
    chat: bool = True,
) -> list[list[float]]:
    """``score[i][j] = Σ_t log p(option_j,t | question_i, option_j,<t)``: the summed log-likelihood of each option.

    The question is rendered with the chat template (generation prompt added) and the option is the
    assistant's reply; see :func:`lorakit.eval.scoring.continuation_ids`.
    """
    sequences, starts, owners = [], [], []
    for i, (question, options) in enumerate(zip(questions, choices)):
        for option in options:
            context, continuation = continuation_ids(tokenizer, question, option, chat=chat)
            sequences.append(context + continuation)
            starts.append(max(len(context), 1))
            owners.append(i)
    logps = token_logprobs(model, sequences, starts, pad=pad_id(tokenizer), batch_size=batch_size)
    scores: list[list[float]] = [[] for _ in questions]
    for owner, lp in zip(owners, logps):
        scores[owner].append(float(lp.sum()))
    return scores


def predicted_choices(scores: Sequence[Sequence[float]]) -> list[int]:
    """The index of the highest score per question (the first one on ties)."""
    return [max(range(len(row)), key=lambda j: (row[j], -j)) for row in scores]


def choice_accuracy(
    model: nn.Module,
    tokenizer,
    questions: Sequence[Prompt],
    choices: Sequence[Sequence[str]],
    answers: Sequence[int],
    *,
    batch_size: int = 8,
    chat: bool = True,
) -> float:
    """Fraction of questions whose most likely option is the answer."""
    picks = predicted_choices(choice_logprobs(model, tokenizer, questions, choices, batch_size=batch_size, chat=chat))
    return sum(p == a for p, a in zip(picks, answers)) / len(answers) if answers else 0.0
