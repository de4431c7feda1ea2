"""OpenAI's response shapes: choices, usage, log-probabilities (chat and completions forms) and stream chunks.

Log-probabilities of ``-inf`` (tokens a grammar, ``logit_bias`` or ``min_tokens`` forbid) are reported as
``-9999.0``, OpenAI's floor, since JSON has no infinity.
"""

from __future__ import annotations

import json
import math

from lorakit.serve.sampling import TokenLogprobs

FLOOR = -9999.0


def _value(logprob: float) -> float:
    return logprob if math.isfinite(logprob) else FLOOR


def token_text(tokenizer, token: int) -> str:
    return tokenizer.decode([token])


def chat_logprobs(tokenizer, entries: list[TokenLogprobs]) -> dict:
    """``{"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}``."""

    def one(token: int, logprob: float) -> dict:
        text = token_text(tokenizer, token)
        return {"token": text, "logprob": _value(logprob), "bytes": list(text.encode("utf-8"))}

    return {"content": [one(e.token, e.logprob) | {"top_logprobs": [one(t, lp) for t, lp in e.top]} for e in entries]}


def completion_logprobs(tokenizer, entries: list[TokenLogprobs], offset: int = 0) -> dict:
    """``{tokens, token_logprobs, top_logprobs: [{token: logprob}], text_offset}`` (offsets in characters,
    starting at ``offset``)."""
    tokens = [token_text(tokenizer, e.token) for e in entries]
    offsets = []
    for text in tokens:
        offsets.append(offset)
        offset += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": [_value(e.logprob) for e in entries],
        "top_logprobs": [{token_text(tokenizer, t): _value(lp) for t, lp in e.top} for e in entries],
        "text_offset": offsets,
    }


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_choice(index: int, text: str, finish: str | None, logprobs: dict | None) -> dict:
    return {
        "index": index,
        "message": {"role": "assistant", "content": text},
        "finish_reason": finish,
        "logprobs": logprobs,
    }


def completion_choice(index: int, text: str, finish: str | None, logprobs: dict | None) -> dict:
    return {"index": index, "text": text, "finish_reason": finish, "logprobs": logprobs}


def sse(payload: dict | str) -> str:
    """One server-sent event."""
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"
