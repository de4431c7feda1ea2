"""The JSON Schema of ``lorakit.json`` (the provenance file beside an adapter's PEFT files), and its check.

Every field is optional and other fields are allowed (provenance grows), but a field lorakit reads must have the
type lorakit reads it as: a value of the wrong type is refused by name instead of failing later with a bare
``TypeError`` deep inside loading or registration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorakit.core.errors import AdapterFileError

_TEXT = {"type": ["string", "null"]}
_MAPPING = {"type": ["object", "null"]}
_DATASET = {
    "type": ["string", "object", "null"],
    "properties": {
        "name": _TEXT,
        "path": _TEXT,
        "uri": _TEXT,
        "sha256": _TEXT,
        "role": _TEXT,
        "rows": {"type": ["integer", "null"], "minimum": 0},
    },
}

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "lorakit.json",
    "type": "object",
    "properties": {
        "lorakit_version": _TEXT,
        "created_at": _TEXT,
        "adapter_name": _TEXT,
        "owner": _TEXT,
        "description": _TEXT,
        "tags": {"type": ["array", "null"], "items": {"type": "string"}},
        "base": {
            "type": ["object", "null"],
            "properties": {
                "name_or_path": _TEXT,
                "fingerprint": {"type": ["string", "null"], "pattern": "^[0-9a-fA-F]{8,}$"},
                "architecture": _TEXT,
                "parameters": {"type": ["integer", "null"], "minimum": 0},
            },
        },
        "training": {
            "type": ["object", "null"],
            "properties": {
                "config": _MAPPING,
                "metrics": {"type": ["object", "array", "null"]},
                "dataset": _MAPPING,
                "step": {"type": ["integer", "null"], "minimum": 0},
            },
        },
        "metrics": {"type": ["object", "array", "null"]},
        "dataset": _DATASET,
        "datasets": {"type": ["array", "null"], "items": _DATASET},
        "lineage": {
            "type": ["object", "null"],
            "properties": {
                "method": _TEXT,
                "params": _MAPPING,
                "parents": {"type": ["array", "null"], "items": {"type": ["string", "object"]}},
            },
        },
    },
}
"""What lorakit reads from ``lorakit.json`` (JSON Schema draft 2020-12)."""


def check_meta(meta: Any, path: str | Path) -> dict[str, Any]:
    """``meta`` if it fits :data:`SCHEMA`;
    else :class:`AdapterFileError` naming every bad key (``base.fingerprint``).
    """
    from jsonschema import Draft202012Validator

    errors = sorted(Draft202012Validator(SCHEMA).iter_errors(meta), key=lambda e: list(map(str, e.absolute_path)))
    if not errors:
        return meta
    problems = []
    for error in errors:
        key = ".".join(str(part) for part in error.absolute_path) or "the top level"
        wanted = error.validator_value if error.validator == "type" else None
        if wanted is not None:
            kinds = " or ".join(k for k in (wanted if isinstance(wanted, list) else [wanted]) if k != "null")
            problems.append(f"{key} must be {kinds} (or null), got {_shown(error.instance)}")
        else:
            problems.append(f"{key}: {error.message}")
    raise AdapterFileError(
        f"{path}: {'; '.join(problems)}; fix the file or remove the key (lorakit.json is provenance, "
        "the adapter itself is in adapter_config.json and adapter_model.safetensors)"
    )


def _shown(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"
