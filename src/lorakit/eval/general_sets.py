"""The general sets that ship with lorakit (``lorakit/resources/eval``), or the user's files in their format.

Prompts (``{"prompt": …}``, for KL drift), text (``{"text": …}``, for perplexity) and general-knowledge
multiple choice (``{"question": …, "choices": […], "answer": i}``, for accuracy), one JSON object a line.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from lorakit.core.errors import DataError
from lorakit.eval.data import EvalRow, parse_row, read_rows

_RESOURCES = "resources/eval"


def _shipped(name: str) -> Path:
    return Path(str(resources.files("lorakit").joinpath(f"{_RESOURCES}/{name}")))


def general_prompts(path: str | Path | None = None) -> list[str]:
    """Prompts (``{"prompt": …}`` lines) from ``path``, default the shipped general prompt set."""
    rows = read_rows(path or _shipped("general_prompts.jsonl"))
    return [_field(where, obj, "prompt") for where, obj in rows]


def general_texts(path: str | Path | None = None) -> list[str]:
    """Texts (``{"text": …}`` lines) from ``path``, default the shipped general-text set."""
    rows = read_rows(path or _shipped("general_text.jsonl"))
    return [_field(where, obj, "text") for where, obj in rows]


def general_choices(path: str | Path | None = None) -> list[EvalRow]:
    """Multiple-choice rows (``question``, ``choices``, ``answer``) from ``path``, default the shipped set."""
    rows = [parse_row(where, obj) for where, obj in read_rows(path or _shipped("general_choices.jsonl"))]
    for row in rows:
        if row.choices is None:
            raise DataError(f"{row.where}: a multiple-choice row needs 'choices' and 'answer'")
    return rows


def _field(where: str, obj: dict, key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise DataError(f"{where}: needs a non-empty text field '{key}'")
    return value
