"""Choosing the next token per row (greedy, temperature, nucleus) and turning tokens into text with stop strings.

Sampling draws from ``softmax(logits / T)`` restricted to the smallest set of tokens whose probability mass
reaches ``top_p`` (nucleus sampling), with a per-request ``torch.Generator`` so a seed reproduces a completion
whatever else shares the batch. ``temperature == 0`` is greedy (argmax).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SamplingParams:
    """How one request generates. ``stop``: strings that end the completion (not included in it);
    ``ignore_eos``: generate ``max_tokens`` whatever the model says (for load tests, as vLLM offers)."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    ignore_eos: bool = False

    def generator(self) -> torch.Generator | None:
        if self.temperature == 0:
            return None
        generator = torch.Generator()
        generator.manual_seed(self.seed if self.seed is not None else int(torch.randint(0, 2**62, ()).item()))
        return generator


def next_tokens(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]) -> list[int]:
    """One token per row from ``logits: (batch, vocab)``; greedy rows share one argmax."""
    greedy = logits.argmax(dim=-1).tolist()  # (batch,)
    tokens = []
    for row, (p, generator) in enumerate(zip(params, generators)):
        tokens.append(greedy[row] if p.temperature == 0 else _sample(logits[row], p, generator))
    return tokens


def _sample(logits: torch.Tensor, p: SamplingParams, generator: torch.Generator) -> int:
    probs = torch.softmax(logits.float() / p.temperature, dim=-1)  # (vocab,)
    if p.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        outside = sorted_probs.cumsum(0) - sorted_probs >= p.top_p  # mass before a token already reaches top_p
        sorted_probs[outside] = 0.0
        choice = torch.multinomial(sorted_probs, 1, generator=generator)
        return int(order[choice].item())
    return int(torch.multinomial(probs, 1, generator=generator).item())


class TextStream:
    """Decodes a growing token list into text deltas, holding back what could still become a stop string.

    ``push(token)`` returns the text that is now final; after a stop string is seen, ``stopped`` is true and
    the text ends just before it. Text ending in an incomplete UTF-8 sequence (``�``) waits for more tokens.
    """

    def __init__(self, tokenizer, stop: list[str]) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.tokens: list[int] = []
        self.text = ""
        self.sent = 0
        self.stopped = False

    def push(self, token: int) -> str:
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        for stop in self.stop:
            at = text.find(stop, max(0, self.sent - len(stop)))
            if at >= 0:
                self.text, self.stopped = text[:at], True
                return self._emit(len(self.text))
        self.text = text
        if text.endswith("\ufffd"):
            return ""
        return self._emit(len(text) - self.hold)

    def finish(self) -> str:
        """Everything not sent yet (the held-back tail), at the end of generation."""
        return self._emit(len(self.text.rstrip("\ufffd")) if not self.stopped else len(self.text))

    def _emit(self, upto: int) -> str:
        if upto <= self.sent:
            return ""
        delta = self.text[self.sent:upto]
        self.sent = upto
        return delta
