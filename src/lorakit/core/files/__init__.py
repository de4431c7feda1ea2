"""Adapter files in PEFT's layout: read (validate everything first), check against a model, load, save atomically.

``read`` and ``atomic`` need no model code; the other names load the layer classes on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "META_FILE": "read",
    "AdapterFiles": "read",
    "read_adapter": "read",
    "register_resolver": "read",
    "resolve_source": "read",
    "check_fits": "layout",
    "expected_shapes": "layout",
    "check_base": "load",
    "load_adapter": "load",
    "restore_adapter": "load",
    "adapter_tensors": "save",
    "base_metadata": "save",
    "save_adapter": "save",
    "write_adapter": "save",
}
__all__ = list(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'lorakit.core.files' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"lorakit.core.files.{_PUBLIC[name]}"), name)
    globals()[name] = value
    return value
