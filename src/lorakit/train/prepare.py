"""From config to tokenized datasets: read rows, split off an eval fraction, check the format, tokenize, pack."""

from __future__ import annotations

import random
from typing import Any

from lorakit.core.errors import ConfigError
from lorakit.data import EncodedData, encode_rows, load_rows, pack
from lorakit.data.load import RowSet
from lorakit.data.preference import encode_preferences
from lorakit.train.config import RunConfig


def prepare_data(
    config: RunConfig, tokenizer, train: Any = None, eval: Any = None
) -> tuple[EncodedData, EncodedData | None]:
    """``(train, eval)`` datasets. ``train``/``eval`` (a path, ``datasets.Dataset`` or list of dicts) override the
    config's paths; ``eval`` is ``None`` when neither ``data.eval`` nor ``data.eval_fraction`` is set."""
    section = config.data
    train = train if train is not None else section.train
    eval = eval if eval is not None else section.eval
    if train is None:
        raise ConfigError("data.train: no training data; set data.train to a .jsonl/.csv/.parquet file")
    train_rows = load_rows(train, skip_bad_lines=section.skip_bad_lines)
    eval_rows = load_rows(eval, skip_bad_lines=section.skip_bad_lines) if eval is not None else None
    if eval_rows is None and section.eval_fraction:
        train_rows, eval_rows = _split(train_rows, section.eval_fraction, config.train.seed)
    encoded = [_encode(rows, tokenizer, config) if rows is not None else None for rows in (train_rows, eval_rows)]
    return encoded[0], encoded[1]


def _split(rows: RowSet, fraction: float, seed: int) -> tuple[RowSet, RowSet]:
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, int(round(len(rows) * fraction)))
    if n_eval >= len(rows):
        raise ConfigError(f"data.eval_fraction={fraction} leaves no training rows out of {len(rows)}")
    held = set(order[:n_eval])
    keep = [r for i, r in enumerate(rows.rows) if i not in held]
    out = [r for i, r in enumerate(rows.rows) if i in held]
    return (
        RowSet(keep, rows.source, rows.sha256, rows.skipped),
        RowSet(out, f"{rows.source} (eval_fraction {fraction})", rows.sha256),
    )


def _encode(rows: RowSet, tokenizer, config: RunConfig) -> EncodedData:
    section = config.data
    if config.train.objective == "dpo":
        return encode_preferences(rows, tokenizer, section.max_length, skip_bad_lines=section.skip_bad_lines)
    data = encode_rows(
        rows,
        tokenizer,
        section.format,
        section.max_length,
        train_on_prompt=section.train_on_prompt,
        skip_bad_lines=section.skip_bad_lines,
    )
    return pack(data, section.max_length) if section.packing else data


def describe(data: EncodedData | None) -> dict[str, Any] | None:
    """Provenance of a dataset: where it came from, its hash, and what tokenizing did to it."""
    if data is None:
        return None
    return {
        "path": data.source,
        "sha256": data.sha256,
        "rows": data.rows,
        "sequences": len(data),
        "target_tokens": data.target_tokens,
        "truncated": data.truncated,
        "skipped": len(data.skipped),
    }
