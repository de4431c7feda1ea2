"""The task spec: a small YAML saying which metrics to compute, on which JSON fields, against which schema.

Every key is optional; absent keys take defaults chosen from the data (see :func:`resolve_metrics`)::

    metrics: [json, schema, perplexity]   # any of METRIC_GROUPS
    fields: [name, city]                  # JSON fields compared one by one (default: the first reference's keys)
    schema: {type: object, required: [name]}   # or schema_file: schema.json (relative to the YAML)
    regex: '^[A-Z][a-z]+$'                # the whole output must match
    max_new_tokens: 64                    # generation length
    batch_size: 8
    samples: 6                            # rows shown base vs adapter in the report
    chat: true                            # render text prompts with the chat template (default: yes, unless
                                          # every row is in the completion format, prompt + completion)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from lorakit.core.errors import ConfigError
from lorakit.core.files.strict_yaml import read_yaml

METRIC_GROUPS = {
    "exact_match": "output equals the reference (surrounding whitespace ignored)",
    "normalized_match": "equal after lower-casing and removing punctuation and articles",
    "token_f1": "F1 of the overlap of normalised words",
    "rouge_l": "ROUGE-L F1 (longest common subsequence of normalised words)",
    "json": "JSON validity, all-fields exact match and per-field accuracy",
    "schema": "output validates against the JSON Schema",
    "regex": "the whole output matches the regex",
    "choice": "multiple-choice accuracy by log-likelihood of the options",
    "perplexity": "loss and perplexity of the reference answers",
}
TEXT_DEFAULTS = ("exact_match", "normalized_match", "token_f1", "rouge_l", "perplexity")


@dataclass
class TaskSpec:
    """What to measure on the evaluation data. Field meanings: see the module docstring."""

    metrics: list[str] | None = None
    fields: list[str] = field(default_factory=list)
    schema: dict[str, Any] | None = None
    regex: str | None = None
    max_new_tokens: int = 64
    batch_size: int = 8
    samples: int = 6
    chat: bool | None = None

    def __post_init__(self) -> None:
        if self.metrics is not None:
            unknown = [m for m in self.metrics if m not in METRIC_GROUPS]
            if unknown or not self.metrics:
                raise ConfigError(
                    f"task spec metrics {unknown or '[]'} unknown; choose from {', '.join(METRIC_GROUPS)}"
                )
            if "schema" in self.metrics and self.schema is None:
                raise ConfigError("task spec asks for metric 'schema' but gives no 'schema' or 'schema_file'")
            if "regex" in self.metrics and self.regex is None:
                raise ConfigError("task spec asks for metric 'regex' but gives no 'regex'")
        if not isinstance(self.fields, list) or not all(isinstance(f, str) and f for f in self.fields):
            raise ConfigError(f"task spec 'fields' must be a list of field names, got {self.fields!r}")
        for name in ("max_new_tokens", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"task spec '{name}' must be a positive integer, got {value!r}")
        if not isinstance(self.samples, int) or self.samples < 0:
            raise ConfigError(f"task spec 'samples' must be a non-negative integer, got {self.samples!r}")
        if self.chat is not None and not isinstance(self.chat, bool):
            raise ConfigError(f"task spec 'chat' must be true or false, got {self.chat!r}")
        if self.schema is not None and not isinstance(self.schema, dict):
            raise ConfigError("task spec 'schema' must be a mapping (a JSON Schema object)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_spec(path: str | Path) -> TaskSpec:
    """Read a task spec YAML strictly (:mod:`lorakit.core.files.strict_yaml`: a duplicate key, an alias bomb or
    bytes that are not UTF-8 are refused at ``file:line``); unknown keys, bad values and unreadable schema files
    raise :class:`ConfigError` naming the file."""
    path = Path(path)
    raw = read_yaml(path, "task spec", "metrics, fields, schema, …")
    known = {f.name for f in fields(TaskSpec)} | {"schema_file"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(known))}")
    if "schema_file" in raw:
        schema_path = path.parent / str(raw.pop("schema_file"))
        try:
            raw["schema"] = json.loads(schema_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ConfigError(f"{path}: schema_file {schema_path} could not be read as JSON: {err}") from None
    try:
        return TaskSpec(**raw)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    except TypeError as err:
        raise ConfigError(f"{path}: {err}") from None
