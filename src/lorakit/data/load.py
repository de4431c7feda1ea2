"""Read training rows from JSONL, CSV or Parquet files, or from a ``datasets.Dataset``.

Every row keeps where it came from (``file:line``) so that a later error can point at it. A file that cannot be
read, a path that is not a regular file (a directory, a FIFO, a device: refused, never waited on), bytes that are
not UTF-8 (``file:line``), a line that is not a JSON object, and an empty dataset are
:class:`~lorakit.core.errors.DataError`.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorakit.core.errors import DataError
from lorakit.core.files.text import check_regular, open_regular, utf8_lines

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


@dataclass
class Row:
    """One example as read: its fields and its origin (``source`` is a path or ``<dataset>``; ``line`` is 1-based)."""

    data: dict[str, Any]
    source: str
    line: int

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}"


@dataclass
class RowSet:
    """The rows of one dataset, with the bad lines skipped (when allowed) and a fingerprint of the source."""

    rows: list[Row]
    source: str
    sha256: str | None = None
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)


def load_rows(source: Any, *, skip_bad_lines: bool = False) -> RowSet:
    """Rows of a JSONL/CSV/Parquet file or a ``datasets.Dataset`` (or a list of dicts).

    ``skip_bad_lines`` skips lines that are not JSON objects and records ``file:line: why`` in ``skipped``.
    """
    if isinstance(source, (str, Path)):
        rowset = _load_file(Path(source), skip_bad_lines)
    elif hasattr(source, "column_names") and hasattr(source, "__getitem__"):
        rowset = RowSet(
            [Row(dict(item), "<dataset>", i + 1) for i, item in enumerate(source)],
            "<dataset>",
            getattr(source, "_fingerprint", None),
        )
    elif isinstance(source, list):
        rows = []
        for i, item in enumerate(source):
            if not isinstance(item, dict):
                raise DataError(f"<list>:{i + 1}: a row must be a dict, got {type(item).__name__}")
            rows.append(Row(item, "<list>", i + 1))
        rowset = RowSet(rows, "<list>")
    else:
        raise DataError(
            f"cannot read training data from a {type(source).__name__}: give a .jsonl/.csv/.parquet path "
            "or a datasets.Dataset"
        )
    if not rowset.rows:
        raise DataError(f"{rowset.source}: the dataset is empty (no rows)")
    return rowset


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open_regular(path, "data file", DataError) as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_file(path: Path, skip_bad_lines: bool) -> RowSet:
    check_regular(path, "data file", DataError)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"{path}: unknown data file type {suffix!r}; use one of {', '.join(SUFFIXES)}")
    rowset = RowSet([], str(path), file_sha256(path))
    readers = {".jsonl": _jsonl_rows, ".json": _jsonl_rows, ".csv": _csv_rows, ".parquet": _parquet_rows}
    for row, problem in readers[suffix](path):
        if problem is None:
            rowset.rows.append(row)
        elif skip_bad_lines:
            rowset.skipped.append(f"{row.where}: {problem}")
        else:
            raise DataError(f"{row.where}: {problem} (fix the line or pass --skip-bad-lines)")
    return rowset


def _jsonl_rows(path: Path) -> Iterator[tuple[Row, str | None]]:
    for lineno, text in utf8_lines(path, "data file", DataError):
        if not text.strip():
            continue
        row = Row({}, str(path), lineno)
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            yield row, f"invalid JSON ({err.msg} at column {err.colno})"
            continue
        if not isinstance(value, dict):
            yield row, f"expected a JSON object, got {type(value).__name__}"
            continue
        row.data = value
        yield row, None


def _csv_rows(path: Path) -> Iterator[tuple[Row, str | None]]:
    reader = csv.DictReader(text for _, text in utf8_lines(path, "data file", DataError))
    try:
        if not reader.fieldnames:
            return
        for record in reader:
            row = Row({}, str(path), reader.line_num)
            if None in record or any(v is None for v in record.values()):
                yield row, f"expected {len(reader.fieldnames)} columns ({', '.join(reader.fieldnames)})"
                continue
            row.data = dict(record)
            yield row, None
    except csv.Error as err:
        raise DataError(f"{path}:{reader.line_num}: malformed CSV ({err})") from None


def _parquet_rows(path: Path) -> Iterator[tuple[Row, str | None]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"{path}: not a readable Parquet file ({err})") from None
    for index, record in enumerate(table.to_pylist()):
        yield Row(record, str(path), index + 1), None
