"""Evaluation data files: rows with a prompt and a reference, read with ``file:line`` errors.

JSONL (one JSON object per line), CSV or Parquet, read by the data layer; its chat, instruction and
completion formats are all accepted. The prompt is ``prompt`` (text), ``messages`` (a chat:
``[{"role", "content"}, …]``; a final assistant message is the reference), ``instruction`` (+ optional ``input``)
or ``question``.
The reference is ``reference`` (text or a JSON object), ``completion``, ``output`` or ``response``.
A multiple-choice row has ``choices`` (a list of texts) and ``answer`` (an index or one of the choices).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorakit.core.errors import DataError
from lorakit.data.load import load_rows as load_data_rows
from lorakit.eval.generate import Prompt

_REFERENCE_KEYS = ("reference", "completion", "output", "response")


@dataclass
class EvalRow:
    """One evaluation example: where it came from, what to ask, and what a right answer is."""

    where: str
    prompt: Prompt
    reference: str | dict | None = None
    choices: list[str] | None = None
    answer: int | None = None
    plain: bool = False  # completion format (``prompt`` + ``completion``): plain text, no chat template


def read_rows(path: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """``(file:line, object)`` for every row of a JSONL/CSV/Parquet file (read by :mod:`lorakit.data.load`).

    A missing file, a line that is not a JSON object, or a file without rows raises :class:`DataError`.
    """
    return [(row.where, row.data) for row in load_data_rows(Path(path)).rows]


def _prompt(where: str, obj: dict) -> tuple[Prompt, str | None]:
    if "messages" in obj:
        messages = obj["messages"]
        if (
            not isinstance(messages, list)
            or not messages
            or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages
            )
        ):
            raise DataError(f'{where}: \'messages\' must be a non-empty list of {{"role": …, "content": …}} objects')
        if messages[-1]["role"] == "assistant":
            if len(messages) == 1:
                raise DataError(f"{where}: 'messages' holds only an assistant message; nothing to prompt with")
            return messages[:-1], messages[-1]["content"]
        return messages, None
    if "instruction" in obj:
        text = _text(where, obj, "instruction")
        extra = obj.get("input") or ""
        return (f"{text}\n\n{_text(where, obj, 'input')}" if extra else text), None
    for key in ("prompt", "question"):
        if key in obj:
            return _text(where, obj, key), None
    raise DataError(f"{where}: no prompt; give 'prompt', 'messages', 'instruction' or 'question'")


def _text(where: str, obj: dict, key: str) -> str:
    value = obj[key]
    if not isinstance(value, str):
        raise DataError(f"{where}: '{key}' must be text, got {type(value).__name__}")
    return value


def _choices(where: str, obj: dict) -> tuple[list[str], int]:
    choices = obj["choices"]
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise DataError(f"{where}: 'choices' must be a list of at least two texts")
    if "answer" not in obj:
        raise DataError(f"{where}: a row with 'choices' needs 'answer' (an index or one of the choices)")
    answer = obj["answer"]
    if isinstance(answer, str) and answer in choices:
        return choices, choices.index(answer)
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(choices):
        return choices, answer
    raise DataError(f"{where}: 'answer' {answer!r} is neither an index below {len(choices)} nor one of the choices")


def parse_row(where: str, obj: dict) -> EvalRow:
    """One :class:`EvalRow` from a JSON object (see the module docstring for the accepted keys)."""
    prompt, reference = _prompt(where, obj)
    for key in _REFERENCE_KEYS:
        if key in obj:
            reference = obj[key]
            if not isinstance(reference, (str, dict)):
                raise DataError(f"{where}: '{key}' must be text or a JSON object, got {type(reference).__name__}")
            break
    row = EvalRow(where=where, prompt=prompt, reference=reference, plain="completion" in obj and "prompt" in obj)
    if "choices" in obj:
        row.choices, row.answer = _choices(where, obj)
    return row


def load_rows(path: str | Path) -> list[EvalRow]:
    """Every row of an evaluation data file."""
    return [parse_row(where, obj) for where, obj in read_rows(path)]
