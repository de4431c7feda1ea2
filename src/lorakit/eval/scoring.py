"""Log-likelihoods under the model: the shared machinery of perplexity, multiple choice and drift.

Sequences are right-padded (so positions are the same as unpadded) and run in batches. For a sequence
``x`` the model's log-probability of token ``x[t]`` is ``log_softmax(logits[t-1])[x[t]]``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lorakit.eval.generate import Prompt, pad_id, prompt_ids


def right_pad(rows: Sequence[Sequence[int]], pad: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)``, both (B, T_max), padding on the right."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(list(row), dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids.to(device), mask.to(device)


@torch.inference_mode()
def token_logprobs(
    model: nn.Module, sequences: Sequence[Sequence[int]], starts: Sequence[int], *, pad: int = 0, batch_size: int = 8
) -> list[torch.Tensor]:
    """For each sequence, the fp32 log-probabilities of its tokens ``seq[start:]`` given the tokens before them.

    ``start`` must be at least 1 (the first token has no prediction). Returns tensors of length ``len(seq) - start``.
    """
    device = next(model.parameters()).device
    out: list[torch.Tensor] = []
    for begin in range(0, len(sequences), batch_size):
        rows, row_starts = sequences[begin : begin + batch_size], starts[begin : begin + batch_size]
        ids, mask = right_pad(rows, pad, device)
        logits = model(input_ids=ids, attention_mask=mask).logits.float()  # (B, T, V)
        logp = torch.log_softmax(logits[:, :-1], dim=-1)  # (B, T-1, V): row t predicts token t+1
        picked = logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)  # (B, T-1)
        for i, (row, start) in enumerate(zip(rows, row_starts)):
            out.append(picked[i, start - 1 : len(row) - 1].cpu())
    return out


@dataclass
class Likelihood:
    """Summed negative log-likelihood over ``tokens`` tokens; ``loss`` is the mean, ``perplexity`` its exp."""

    nll: float
    tokens: int

    @property
    def loss(self) -> float:
        return self.nll / self.tokens if self.tokens else float("nan")

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss) if self.tokens else float("nan")


def continuation_ids(
    tokenizer, context: Prompt, continuation: str, *, chat: bool = True
) -> tuple[list[int], list[int]]:
    """Token ids of the rendered context (chat template, generation prompt) and of the continuation after it.

    Without a chat template the continuation is preceded by one space, as a plain language model expects.
    """
    context_ids = prompt_ids(tokenizer, context, chat=chat)
    templated = isinstance(context, list) or (chat and getattr(tokenizer, "chat_template", None) is not None)
    text = continuation if templated else " " + continuation.lstrip()
    return context_ids, tokenizer(text, add_special_tokens=False)["input_ids"]


def reference_likelihood(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[Prompt],
    references: Sequence[str],
    *,
    batch_size: int = 8,
    chat: bool = True,
) -> Likelihood:
    """Token-weighted NLL of each reference answer given its prompt: ``Σ_rows Σ_t −log p(ref_t | prompt, ref_<t)``."""
    pairs = [continuation_ids(tokenizer, p, r, chat=chat) for p, r in zip(prompts, references)]
    logps = token_logprobs(
        model,
        [c + r for c, r in pairs],
        [max(len(c), 1) for c, _ in pairs],
        pad=pad_id(tokenizer),
        batch_size=batch_size,
    )
    return Likelihood(nll=-sum(float(lp.sum()) for lp in logps), tokens=sum(lp.numel() for lp in logps))


def text_likelihood(
    model: nn.Module, tokenizer, texts: Sequence[str], *, batch_size: int = 8, max_tokens: int = 256
) -> Likelihood:
    """Token-weighted NLL of plain texts (no chat template), each truncated to ``max_tokens``,
    every token after the first.
    """
    sequences = [tokenizer(t)["input_ids"][:max_tokens] for t in texts]
    logps = token_logprobs(model, sequences, [1] * len(sequences), pad=pad_id(tokenizer), batch_size=batch_size)
    return Likelihood(nll=-sum(float(lp.sum()) for lp in logps), tokens=sum(lp.numel() for lp in logps))
