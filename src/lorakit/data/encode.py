"""Tokenize examples into ``input_ids`` and ``labels``: -100 on every prompt token so that only responses train.

A chat is rendered once with the tokenizer's chat template. The character span of each assistant turn is found
by rendering the conversation up to that turn (with and without the turn), and a token is a label when its first
character lies inside such a span — so the template's own markers around a response (``<|im_end|>``) are learnt
and the roles, system prompt and user turns are not. Sequences longer than ``max_length`` are cut at the end and
counted, and so are the rows whose cut left no label at all; a dataset with no label token left is a
:class:`~lorakit.core.errors.DataError` (training on it would run at a loss of 0 and learn nothing).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lorakit.core.errors import DataError
from lorakit.data.formats import Example, detect_format, to_example
from lorakit.data.load import Row, RowSet

IGNORE = -100


@dataclass
class Encoded:
    """One tokenized example; ``labels[t]`` is the token to predict at ``t`` (-100: no loss)."""

    input_ids: list[int]
    labels: list[int]

    @property
    def target_count(self) -> int:
        """Tokens that carry loss once labels are shifted left by one (the first token is never predicted)."""
        return sum(1 for label in self.labels[1:] if label != IGNORE)


@dataclass
class EncodedData:
    """A tokenized dataset with its bookkeeping: rows read, rows truncated, lines skipped."""

    examples: list[Encoded]
    source: str
    sha256: str | None = None
    truncated: int = 0
    skipped: list[str] = field(default_factory=list)
    rows: int = 0
    """Rows read (before skipping and packing)."""
    unlabelled: int = 0
    """Examples left without any label token (their response was cut off by ``max_length``)."""
    format: str | None = None
    """The row format used (given, or detected from the rows)."""

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def target_tokens(self) -> int:
        return sum(e.target_count for e in self.examples)


def encode_rows(
    rowset: RowSet,
    tokenizer,
    fmt: str | None,
    max_length: int,
    *,
    train_on_prompt: bool = False,
    skip_bad_lines: bool = False,
) -> EncodedData:
    """Check every row against ``fmt`` and tokenize it; with ``skip_bad_lines`` rows that do not fit are counted.

    ``fmt=None`` detects the format from the rows' keys (:func:`~lorakit.data.formats.detect_format`).
    ``max_length`` is in tokens.

    Raises:
        DataError: a row does not fit the format (``file:line``), no row is usable, or truncation to
            ``max_length`` left no label token in the whole dataset.
    """
    fmt = fmt or detect_format(rowset)
    data = EncodedData(
        [],
        rowset.source,
        rowset.sha256,
        skipped=list(rowset.skipped),
        rows=len(rowset) + len(rowset.skipped),
        format=fmt,
    )
    for row in rowset.rows:
        try:
            example = to_example(row, fmt)
        except DataError as err:
            if not skip_bad_lines:
                raise
            data.skipped.append(str(err))
            continue
        encoded, truncated = encode_example(example, tokenizer, max_length, train_on_prompt=train_on_prompt, row=row)
        data.examples.append(encoded)
        data.truncated += truncated
        data.unlabelled += encoded.target_count == 0
    if not data.examples:
        raise DataError(f"{rowset.source}: no usable rows ({len(data.skipped)} skipped, first: {data.skipped[:1]})")
    if data.target_tokens == 0:
        raise DataError(
            f"{rowset.source}: no label (response) tokens left to train on: {data.unlabelled} of "
            f"{len(data)} rows lost all their labels to truncation at data.max_length={max_length} "
            "tokens; raise data.max_length or shorten the prompts"
        )
    return data


def encode_example(
    example: Example, tokenizer, max_length: int, *, train_on_prompt: bool = False, row: Row | None = None
) -> tuple[Encoded, bool]:
    """``(Encoded, truncated)`` for one example."""
    if example.messages is not None:
        ids, labels = _encode_chat(example.messages, tokenizer, row)
    else:
        prompt = tokenizer(example.prompt, add_special_tokens=True)["input_ids"] if example.prompt else []
        completion = tokenizer(example.completion, add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None:
            completion = completion + [tokenizer.eos_token_id]
        ids, labels = prompt + completion, [IGNORE] * len(prompt) + completion
    if train_on_prompt:
        labels = list(ids)
    truncated = len(ids) > max_length
    return Encoded(ids[:max_length], labels[:max_length]), truncated


def _encode_chat(messages: list[dict[str, str]], tokenizer, row: Row | None) -> tuple[list[int], list[int]]:
    where = row.where if row is not None else "<example>"
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(f"{where}: the tokenizer has no chat template; use data.format: completion for plain text")
    text = _render(tokenizer, messages)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], generation_prompt=True) if i else ""
        through = _render(tokenizer, messages[: i + 1])
        if not through.startswith(before) or not text.startswith(through):
            raise DataError(
                f"{where}: the tokenizer's chat template renders a conversation differently from its "
                "prefixes, so responses cannot be located; use data.format: completion"
            )
        spans.append((len(before), len(through)))
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoding["input_ids"])
    labels = [
        token if any(lo <= start < hi for lo, hi in spans) else IGNORE
        for token, (start, _end) in zip(ids, encoding["offset_mapping"])
    ]
    return ids, labels


def _render(tokenizer, messages: list[dict[str, str]], generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
