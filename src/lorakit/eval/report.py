"""The evaluation report: its data (``report.json``), metric names and directions, and where it is written."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lorakit._version import __version__
from lorakit.core.files import atomic
from lorakit.eval.data import EvalRow
from lorakit.eval.report_html import render_html


def prompt_text(prompt: str | list[dict]) -> str:
    """A prompt as a person reads it: the text, or one ``role: content`` line per chat message."""
    return prompt if isinstance(prompt, str) else "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def sample_rows(rows: list[EvalRow], outputs: dict[str, list[str]], count: int) -> list[dict[str, Any]]:
    """The first ``count`` rows with their reference and every column's output, for reading side by side."""
    samples = []
    for i, row in enumerate(rows[:count]):
        reference = (
            row.reference
            if isinstance(row.reference, str) or row.reference is None
            else json.dumps(row.reference, ensure_ascii=False)
        )
        samples.append(
            {
                "where": row.where,
                "prompt": prompt_text(row.prompt),
                "reference": reference,
                "outputs": {column: texts[i] for column, texts in outputs.items()},
            }
        )
    return samples


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


@dataclass
class EvalReport:
    """Everything one evaluation measured. ``metrics`` and ``regression`` map metric → column → value."""

    base: dict[str, str]
    data: str
    columns: list[str]
    adapters: dict[str, str]
    task: dict[str, Any]
    metrics: dict[str, dict[str, float]]
    regression: dict[str, dict[str, float]] | None
    thresholds: dict[str, float | None] | None
    failures: list[str]
    samples: list[dict[str, Any]]
    seconds: float
    lorakit_version: str = __version__
    files: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """False when a ``max_drift`` threshold failed an adapter."""
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data; a non-finite number (e.g. the loss of empty references) becomes ``None``."""
        return _finite({**asdict(self), "passed": self.passed})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False, allow_nan=False)

    def write(self, directory: str | Path) -> dict[str, str]:
        """Write ``report.json`` and the self-contained ``report.html`` into ``directory`` (atomically);
        returns their paths.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.files = {"json": str(directory / "report.json"), "html": str(directory / "report.html")}
        atomic.write_text(self.files["json"], self.to_json())
        atomic.write_text(self.files["html"], render_html(self))
        return self.files
