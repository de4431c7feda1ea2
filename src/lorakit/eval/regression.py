"""The shipped general sets that measure what an adapter may have broken, and how to load your own.

Three sets, written for lorakit, live in ``lorakit/resources/eval``: general prompts (for KL drift),
general text (for perplexity) and general-knowledge multiple choice (for accuracy). Each is JSONL:
``{"prompt": …}``, ``{"text": …}`` and ``{"question": …, "choices": […], "answer": i}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from lorakit.errors import DataError
from lorakit.eval.data import EvalRow, parse_row, read_jsonl

_RESOURCES = "resources/eval"


def _shipped(name: str) -> Path:
    return Path(str(resources.files("lorakit").joinpath(f"{_RESOURCES}/{name}")))


def general_prompts(path: str | Path | None = None) -> list[str]:
    """Prompts (``{"prompt": …}`` lines) from ``path``, default the shipped general prompt set."""
    rows = read_jsonl(path or _shipped("general_prompts.jsonl"))
    return [_field(where, obj, "prompt") for where, obj in rows]


def general_texts(path: str | Path | None = None) -> list[str]:
    """Texts (``{"text": …}`` lines) from ``path``, default the shipped general-text set."""
    rows = read_jsonl(path or _shipped("general_text.jsonl"))
    return [_field(where, obj, "text") for where, obj in rows]


def general_choices(path: str | Path | None = None) -> list[EvalRow]:
    """Multiple-choice rows (``question``, ``choices``, ``answer``) from ``path``, default the shipped set."""
    rows = [parse_row(where, obj) for where, obj in read_jsonl(path or _shipped("general_choices.jsonl"))]
    for row in rows:
        if row.choices is None:
            raise DataError(f"{row.where}: a multiple-choice row needs 'choices' and 'answer'")
    return rows


def _field(where: str, obj: dict, key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise DataError(f"{where}: needs a non-empty text field '{key}'")
    return value


@dataclass
class RegressionSet:
    """The three general sets one regression run uses."""

    prompts: list[str]
    texts: list[str]
    choices: list[EvalRow]
