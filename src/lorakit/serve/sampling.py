"""Choosing the next token per row and turning tokens into text with stop strings.

Each row's logits ``(vocab,)`` go through, in order: ``logit_bias`` (added), the repetition penalty (CTRL,
Keskar et al. 2019: a positive logit of a token already in the prompt or the output is divided by it, a
negative one multiplied), the presence and frequency penalties (OpenAI's definition: ``l_j -= c_j · frequency
+ [c_j > 0] · presence`` with ``c_j`` the count of token ``j`` in the output so far), ``min_tokens`` (EOS and
``stop_token_ids`` forbidden until that many tokens exist) and a grammar's token mask (``response_format``).
Log-probabilities (``logprobs``) are the log-softmax of those processed logits divided by the temperature
(by 1 when greedy), before truncation. Sampling then keeps the ``top_k`` most likely tokens, the smallest set
reaching mass ``top_p`` (nucleus, Holtzman et al. 2020) and the tokens with at least ``min_p`` times the
largest probability, and draws with a per-request ``torch.Generator`` so a seed reproduces a completion
whatever else shares the batch. ``temperature == 0`` is greedy (argmax).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SamplingParams:
    """How one request generates. ``stop``: strings that end the completion (not included in it);
    ``stop_token_ids``: token ids that end it (not included); ``ignore_eos``: generate ``max_tokens`` whatever
    the model says (for load tests, as vLLM offers); ``logprobs``: how many alternatives to report per token
    (0: only the chosen token's; None: no log-probabilities); ``grammar``: an llguidance grammar the output
    must match (built from ``response_format`` by :mod:`lorakit.serve.grammar`)."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    min_tokens: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    logprobs: int | None = None
    grammar: str | None = None

    @property
    def plain(self) -> bool:
        """No processing of the logits beyond temperature and nucleus sampling (the fast path)."""
        return (
            not self.logit_bias
            and self.repetition_penalty == 1.0
            and not self.presence_penalty
            and not self.frequency_penalty
            and not self.min_tokens
            and self.logprobs is None
            and self.grammar is None
            and self.top_k <= 0
            and self.min_p == 0.0
        )

    def generator(self) -> torch.Generator | None:
        if self.temperature == 0:
            return None
        generator = torch.Generator()
        generator.manual_seed(self.seed if self.seed is not None else int(torch.randint(0, 2**62, ()).item()))
        return generator


@dataclass
class TokenLogprobs:
    """The chosen token's log-probability and the ``top`` most likely ``(token, logprob)`` at one step."""

    token: int
    logprob: float
    top: list[tuple[int, float]]


def next_tokens(
    logits: torch.Tensor, rows: list, eos_ids: set[int] = frozenset()
) -> list[tuple[int, TokenLogprobs | None]]:
    """One token per row from ``logits: (batch, vocab)``. ``rows`` have ``params``, ``generator``, ``prompt``,
    ``tokens`` (the output so far) and ``constraint`` (a :class:`~lorakit.serve.grammar.Constraint` or None).
    Greedy rows without processing share one argmax."""
    greedy = None
    chosen = []
    for row, request in enumerate(rows):
        p = request.params
        if p.plain and request.constraint is None:
            if p.temperature == 0:
                greedy = logits.argmax(dim=-1).tolist() if greedy is None else greedy
                chosen.append((greedy[row], None))
            else:
                chosen.append((_draw(logits[row].float() / p.temperature, p, request.generator), None))
            continue
        processed = process(logits[row], request, eos_ids)
        scaled = processed / p.temperature if p.temperature > 0 else processed
        token = int(scaled.argmax()) if p.temperature == 0 else _draw(scaled, p, request.generator)
        chosen.append((token, _logprobs(scaled, token, p.logprobs) if p.logprobs is not None else None))
    return chosen


def process(logits: torch.Tensor, request, eos_ids: set[int]) -> torch.Tensor:
    """The row's logits ``(vocab,)`` after bias, penalties, ``min_tokens`` and the grammar (float32, a copy)."""
    p = request.params
    out = logits.float().clone()
    vocab = out.shape[0]
    if p.logit_bias:
        ids = torch.tensor([t for t in p.logit_bias if t < vocab], dtype=torch.long)
        out[ids] += torch.tensor([p.logit_bias[t] for t in ids.tolist()], dtype=out.dtype)
    if p.repetition_penalty != 1.0:
        seen = torch.tensor(sorted(set(request.prompt) | set(request.tokens)), dtype=torch.long)
        values = out[seen]
        out[seen] = torch.where(values > 0, values / p.repetition_penalty, values * p.repetition_penalty)
    if (p.presence_penalty or p.frequency_penalty) and request.tokens:
        counts = torch.bincount(torch.tensor(request.tokens, dtype=torch.long), minlength=vocab)[:vocab].to(out.dtype)
        out -= counts * p.frequency_penalty + (counts > 0).to(out.dtype) * p.presence_penalty
    if len(request.tokens) < p.min_tokens:
        banned = [t for t in (set() if p.ignore_eos else eos_ids) | set(p.stop_token_ids) if t < vocab]
        out[banned] = float("-inf")
    if request.constraint is not None:
        out.masked_fill_(~request.constraint.allowed(vocab), float("-inf"))
    return out


def _logprobs(scaled: torch.Tensor, token: int, top: int) -> TokenLogprobs:
    logprobs = torch.log_softmax(scaled, dim=-1)
    best = []
    if top:
        values, ids = logprobs.topk(top)
        best = [(int(i), float(v)) for i, v in zip(ids.tolist(), values.tolist())]
    return TokenLogprobs(token, float(logprobs[token]), best)


def _draw(scaled: torch.Tensor, p: SamplingParams, generator: torch.Generator) -> int:
    """Sample from ``softmax(scaled)`` truncated by ``top_k``, ``top_p`` and ``min_p``."""
    probs = torch.softmax(scaled, dim=-1)  # (vocab,)
    if p.top_p < 1.0 or p.top_k > 0 or p.min_p > 0:
        sorted_probs, order = probs.sort(descending=True)
        if p.top_k > 0:
            sorted_probs[p.top_k :] = 0.0
        if p.top_p < 1.0:
            outside = sorted_probs.cumsum(0) - sorted_probs >= p.top_p  # mass before a token already reaches top_p
            sorted_probs[outside] = 0.0
        if p.min_p > 0:
            sorted_probs[sorted_probs < p.min_p * sorted_probs[0]] = 0.0
        choice = torch.multinomial(sorted_probs, 1, generator=generator)
        return int(order[choice].item())
    return int(torch.multinomial(probs, 1, generator=generator).item())


class TextStream:
    """Decodes a growing token list into text deltas, holding back what could still become a stop string.

    ``push(token)`` returns the text that is now final; after a stop string is seen, ``stopped`` is true and
    the text ends just before it (``check_stops=False`` skips the search, for tokens before ``min_tokens``).
    Text ending in an incomplete UTF-8 sequence (``�``) waits for more tokens.
    """

    def __init__(self, tokenizer, stop: list[str]) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.tokens: list[int] = []
        self.text = ""
        self.sent = 0
        self.stopped = False

    def push(self, token: int, check_stops: bool = True) -> str:
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        for stop in self.stop if check_stops else ():
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
        delta = self.text[self.sent : upto]
        self.sent = upto
        return delta
