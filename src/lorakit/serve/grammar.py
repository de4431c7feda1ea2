"""Constrained decoding for ``response_format`` (``json_object``, ``json_schema``) with llguidance.

llguidance (the Rust parser behind guidance, also used by vLLM, SGLang and llama.cpp) computes the set of
tokens that keep the output a valid prefix of a grammar, per step, on the CPU, from the Hugging Face
tokenizer itself: no per-schema index to build and no GPU kernel. JSON is compiled without free whitespace,
so the model cannot stall in blanks. :func:`grammar_for` turns a ``response_format`` into a grammar string
(kept in :class:`~lorakit.serve.sampling.SamplingParams`); :class:`Constraint` follows one request's tokens.
"""

from __future__ import annotations

import json
import threading

import numpy as np
import torch

from lorakit.core.errors import ConfigError


class GrammarError(ConfigError):
    """A ``response_format`` that cannot be turned into a grammar or enforced (HTTP 400 naming it)."""


_JSON_OPTIONS = {"whitespace_flexible": False}
_tokenizers: dict[int, object] = {}
_lock = threading.Lock()


def grammar_for(response_format: dict | None) -> str | None:
    """The llguidance grammar for an OpenAI ``response_format`` (None for ``text`` or no format).

    Raises :class:`GrammarError` for an unknown type or a schema that is not a
    JSON object."""
    import llguidance

    kind = (response_format or {}).get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        schema: object = {"type": "object"}
    elif kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema", {}) if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise GrammarError("response_format.json_schema.schema must be a JSON object (a JSON Schema)")
    else:
        raise GrammarError(f"response_format.type {kind!r} is not one of text, json_object, json_schema")
    try:
        return llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema), overrides=_JSON_OPTIONS)
    except ValueError as err:
        raise GrammarError(f"response_format: {err}") from None


def _ll_tokenizer(tokenizer, vocab: int):
    """The llguidance view of ``tokenizer`` (built once per tokenizer and vocabulary: about a second)."""
    from llguidance.hf import from_tokenizer

    key = id(tokenizer) * 1_000_003 + vocab
    with _lock:
        if key not in _tokenizers:
            _tokenizers[key] = (tokenizer, from_tokenizer(tokenizer, n_vocab=vocab))
        return _tokenizers[key][1]


class Constraint:
    """One request's position in ``grammar``: :meth:`allowed` is the mask of tokens that keep the output
    valid, :meth:`advance` consumes the chosen token, ``stopped`` is true once only end-of-text may follow.

    Raises :class:`GrammarError` when the grammar does not compile (e.g. an unsupported schema keyword)."""

    def __init__(self, grammar: str, tokenizer, vocab: int) -> None:
        import llguidance

        self.matcher = llguidance.LLMatcher(_ll_tokenizer(tokenizer, vocab), grammar)
        if self.matcher.is_error():
            raise GrammarError(f"response_format: the schema cannot be enforced: {self.matcher.get_error()}")

    def allowed(self, vocab: int) -> torch.Tensor:
        """``(vocab,)`` bool: the tokens allowed next."""
        bits = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
        mask = np.unpackbits(bits, bitorder="little")[:vocab].astype(bool)
        out = torch.zeros(vocab, dtype=torch.bool)
        out[: mask.shape[0]] = torch.from_numpy(mask)
        return out

    def advance(self, token: int) -> None:
        self.matcher.consume_token(token)

    @property
    def stopped(self) -> bool:
        return self.matcher.is_stopped()
