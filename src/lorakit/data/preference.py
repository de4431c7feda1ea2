"""Preference data for DPO: rows ``{"prompt", "chosen", "rejected"}``, checked and tokenized into pairs.

Two row forms, the same distinction as SFT's ``chat`` and ``completion`` formats:

- **chat**: ``prompt`` is a list of messages (``[{"role": "user", "content": ...}]``, a system turn allowed)
  and ``chosen``/``rejected`` are a string or a one-message list ``[{"role": "assistant", "content": ...}]``.
  Each response is rendered after the prompt with the tokenizer's chat template (its end-of-turn marker is
  part of the response).
- **plain**: ``prompt``, ``chosen`` and ``rejected`` are strings; the response is the text after the prompt
  followed by the end-of-sequence token.

Only response tokens carry labels (everything up to the rendered prompt is -100), so a sequence's log-probability
is the sum over its response tokens. A missing key, an empty response, or a ``chosen`` equal to ``rejected``
is a :class:`~lorakit.core.errors.DataError` at ``file:line``. Rows come from any source
:func:`lorakit.data.load.load_rows` reads (JSONL, CSV, Parquet, ``datasets.Dataset``, a list of dicts).
"""

from __future__ import annotations

from dataclasses import dataclass

from lorakit.core.errors import DataError
from lorakit.data.collate import collate
from lorakit.data.encode import IGNORE, Encoded, EncodedData
from lorakit.data.formats import ROLES
from lorakit.data.load import Row, RowSet

KEYS = ("prompt", "chosen", "rejected")


@dataclass
class PreferencePair:
    """One tokenized pair; ``reference`` holds the base's ``(log p(chosen), log p(rejected))`` once precomputed."""

    chosen: Encoded
    rejected: Encoded
    where: str = "<pair>"
    reference: tuple[float, float] | None = None

    @property
    def target_count(self) -> int:
        """The trainer averages the loss over pairs, so each pair counts once."""
        return 1


@dataclass
class PreferenceData(EncodedData):
    """Tokenized pairs with the bookkeeping of :class:`EncodedData` (``examples`` holds :class:`PreferencePair`)."""

    @property
    def target_tokens(self) -> int:
        """Response tokens over both sides of every pair."""
        return sum(p.chosen.target_count + p.rejected.target_count for p in self.examples)


def encode_preferences(rowset: RowSet, tokenizer, max_length: int, *, skip_bad_lines: bool = False) -> PreferenceData:
    """Check every row and tokenize its two sequences; ``skip_bad_lines`` counts bad rows instead of stopping.

    Raises :class:`DataError` (``file:line: ...``) for a row that is not a preference pair, and when no row is usable.
    """
    data = PreferenceData(
        [], rowset.source, rowset.sha256, skipped=list(rowset.skipped), rows=len(rowset) + len(rowset.skipped)
    )
    for row in rowset.rows:
        try:
            pair, truncated = encode_pair(row, tokenizer, max_length)
        except DataError as err:
            if not skip_bad_lines:
                raise
            data.skipped.append(str(err))
            continue
        data.examples.append(pair)
        data.truncated += truncated
    if not data.examples:
        raise DataError(
            f"{rowset.source}: no usable preference rows ({len(data.skipped)} skipped, first: {data.skipped[:1]})"
        )
    return data


def encode_pair(row: Row, tokenizer, max_length: int) -> tuple[PreferencePair, bool]:
    """``(pair, truncated)`` for one row; a response cut away entirely by ``max_length`` is a :class:`DataError`."""
    missing = [k for k in KEYS if k not in row.data]
    if missing:
        raise DataError(
            f"{row.where}: a preference row needs keys prompt, chosen, rejected; missing "
            f"{', '.join(missing)} (the row has {', '.join(sorted(map(str, row.data))) or 'no keys'})"
        )
    prompt = row.data["prompt"]
    chosen, rejected = _response(row, "chosen"), _response(row, "rejected")
    if chosen == rejected:
        raise DataError(
            f"{row.where}: 'chosen' and 'rejected' are identical, so the pair teaches nothing; fix or drop the row"
        )
    if isinstance(prompt, list):
        messages = _messages(row, prompt)
        sides = [_encode_chat(messages, text, tokenizer, row) for text in (chosen, rejected)]
    elif isinstance(prompt, str):
        sides = [_encode_plain(prompt, text, tokenizer) for text in (chosen, rejected)]
    else:
        raise DataError(f"{row.where}: 'prompt' must be a string or a list of messages, got {type(prompt).__name__}")
    truncated = any(len(ids) > max_length for ids, _ in sides)
    encoded = [Encoded(ids[:max_length], labels[:max_length]) for ids, labels in sides]
    for name, side in zip(("chosen", "rejected"), encoded):
        if side.target_count == 0:
            raise DataError(
                f"{row.where}: the prompt fills data.max_length={max_length} tokens, so no token of "
                f"'{name}' is left; raise data.max_length or shorten the prompt"
            )
    return PreferencePair(encoded[0], encoded[1], row.where), truncated


def collate_pairs(pairs: list[PreferencePair], pad_id: int) -> dict:
    """One batch of ``2B`` rows: the chosen sequences (rows ``0..B-1``), then the rejected ones (``B..2B-1``).

    Adds ``reference_logps`` (2B,) in the same order when every pair carries precomputed reference log-probs.
    """
    import torch

    batch = collate([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id)
    if all(p.reference is not None for p in pairs):
        values = [p.reference[0] for p in pairs] + [p.reference[1] for p in pairs]
        batch["reference_logps"] = torch.tensor(values, dtype=torch.float64)
    return batch


def _response(row: Row, key: str) -> str:
    value = row.data[key]
    if isinstance(value, list):
        if len(value) != 1 or not isinstance(value[0], dict) or value[0].get("role") != "assistant":
            raise DataError(
                f"{row.where}: {key!r} must be a string or one message [{{'role': 'assistant', 'content': ...}}]"
            )
        value = value[0].get("content")
    if not isinstance(value, str):
        raise DataError(f"{row.where}: {key!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{row.where}: {key!r} is an empty response; every pair needs two non-empty answers")
    return value


def _messages(row: Row, prompt: list) -> list[dict[str, str]]:
    if not prompt:
        raise DataError(f"{row.where}: 'prompt' is an empty message list")
    for i, message in enumerate(prompt):
        if (
            not isinstance(message, dict)
            or not isinstance(message.get("content"), str)
            or message.get("role") not in ROLES
        ):
            raise DataError(
                f"{row.where}: prompt[{i}] must be {{'role': one of {', '.join(ROLES)}, 'content': str}}, "
                f"got {str(message)[:80]}"
            )
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def _encode_chat(messages: list[dict[str, str]], response: str, tokenizer, row: Row) -> tuple[list[int], list[int]]:
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            f"{row.where}: the prompt is a message list but the tokenizer has no chat template; "
            "give the prompt as a plain string"
        )
    before = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    text = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": response}], tokenize=False)
    if not text.startswith(before):
        raise DataError(
            f"{row.where}: the tokenizer's chat template renders the prompt differently once a response "
            "follows, so the response cannot be located; give plain-string prompts instead"
        )
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoding["input_ids"])
    labels = [
        token if start >= len(before) else IGNORE for token, (start, _end) in zip(ids, encoding["offset_mapping"])
    ]
    return ids, labels


def _encode_plain(prompt: str, response: str, tokenizer) -> tuple[list[int], list[int]]:
    head = tokenizer(prompt, add_special_tokens=True)["input_ids"] if prompt else []
    tail = tokenizer(response, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        tail = tail + [tokenizer.eos_token_id]
    return head + tail, [IGNORE] * len(head) + tail
