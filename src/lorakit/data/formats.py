"""The three row formats and their conversion to one :class:`Example`.

- ``chat``: ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}``, at least one
  assistant turn; the assistant turns are the responses.
- ``instruction``: ``{"instruction": str, "input": str (optional), "output": str}``, turned into a user turn
  (instruction, blank line, input) and an assistant turn (output).
- ``completion``: ``{"prompt": str, "completion": str}``, plain text without a chat template.

When no format is given, :func:`detect_format` picks the one whose keys every row has.
"""

from __future__ import annotations

from dataclasses import dataclass

from lorakit.core.errors import DataError
from lorakit.data.load import Row, RowSet

FORMATS = ("chat", "instruction", "completion")
ROLES = ("system", "user", "assistant", "tool")
_KEYS = {"chat": ("messages",), "instruction": ("instruction", "output"), "completion": ("prompt", "completion")}


@dataclass
class Example:
    """A chat (``messages``) or a plain prompt/completion pair (``prompt``, ``completion``)."""

    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    completion: str | None = None


def guess_format(data: dict) -> str | None:
    """The format whose keys a row has, or ``None``."""
    for name, keys in _KEYS.items():
        if all(k in data for k in keys):
            return name
    return None


def detect_format(rowset: RowSet) -> str:
    """The one format whose keys every row has;
    a :class:`DataError` naming the odd row otherwise (set ``data.format``).
    """
    fitting = [name for name, keys in _KEYS.items() if all(all(k in row.data for k in keys) for row in rowset.rows)]
    if len(fitting) == 1:
        return fitting[0]
    if fitting:
        raise DataError(f"{rowset.source}: the rows fit several formats ({', '.join(fitting)}); set data.format")
    first = guess_format(rowset.rows[0].data)
    odd = next(row for row in rowset.rows if first is None or guess_format(row.data) != first)
    needs = "; ".join(f"{name}: {', '.join(keys)}" for name, keys in _KEYS.items())
    raise DataError(
        f"{odd.where}: cannot tell the data format from keys {', '.join(sorted(map(str, odd.data))) or 'none'} "
        f"(rows need the keys of one format — {needs}); fix the rows or set data.format"
    )


def to_example(row: Row, fmt: str) -> Example:
    """Check ``row`` against format ``fmt`` and convert it; a mismatch is a :class:`DataError` at ``file:line``."""
    if fmt not in FORMATS:
        raise DataError(f"unknown data format {fmt!r}; use one of {', '.join(FORMATS)}")
    data = row.data
    missing = [k for k in _KEYS[fmt] if k not in data]
    if missing:
        guess = guess_format(data)
        hint = f"; it looks like the {guess!r} format: set data.format: {guess}" if guess else ""
        raise DataError(
            f"{row.where}: format {fmt!r} needs key(s) {', '.join(missing)}; the row has "
            f"{', '.join(sorted(map(str, data))) or 'no keys'}{hint}"
        )
    if fmt == "chat":
        return Example(messages=_messages(row))
    if fmt == "instruction":
        instruction = _text(row, "instruction")
        extra = data.get("input") or ""
        if not isinstance(extra, str):
            raise DataError(f"{row.where}: 'input' must be a string, got {type(extra).__name__}")
        user = f"{instruction}\n\n{extra}" if extra else instruction
        return Example(
            messages=[{"role": "user", "content": user}, {"role": "assistant", "content": _text(row, "output")}]
        )
    return Example(prompt=_text(row, "prompt", allow_empty=True), completion=_text(row, "completion"))


def _text(row: Row, key: str, allow_empty: bool = False) -> str:
    value = row.data[key]
    if not isinstance(value, str):
        raise DataError(f"{row.where}: {key!r} must be a string, got {type(value).__name__}")
    if not value and not allow_empty:
        raise DataError(f"{row.where}: {key!r} is empty")
    return value


def _messages(row: Row) -> list[dict[str, str]]:
    messages = row.data["messages"]
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{row.where}: 'messages' must be a non-empty list of {{'role', 'content'}} objects")
    for i, message in enumerate(messages):
        if (
            not isinstance(message, dict)
            or not isinstance(message.get("content"), str)
            or message.get("role") not in ROLES
        ):
            raise DataError(
                f"{row.where}: messages[{i}] must be {{'role': one of {', '.join(ROLES)}, 'content': str}}, "
                f"got {str(message)[:80]}"
            )
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(
            f"{row.where}: no assistant message, so nothing to learn; add the expected response as "
            "{'role': 'assistant', 'content': ...}"
        )
    return [{"role": m["role"], "content": m["content"]} for m in messages]
