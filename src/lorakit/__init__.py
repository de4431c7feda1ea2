"""lorakit: the whole life of a LoRA adapter — inject, train, evaluate, inspect, merge, register and serve.

A lazy facade: ``import lorakit`` loads nothing heavy; each public name below is imported on first use
(module ``__getattr__``), so ``lorakit.core`` never drags in training, evaluation, serving or the registry.
"""

from __future__ import annotations

import importlib
from typing import Any

from lorakit import _aliases
from lorakit._version import __version__

# public name -> (module, attribute or None for the module itself)
_PUBLIC: dict[str, tuple[str, str | None]] = {
    "LoraConfig": ("lorakit.core.config", "LoraConfig"),
    "inject": ("lorakit.core.model", "inject"),
    "set_active": ("lorakit.core.model", "set_active"),
    "active_adapters": ("lorakit.core.model", "active_adapters"),
    "adapter_names": ("lorakit.core.model", "adapter_names"),
    "disabled": ("lorakit.core.model", "disabled"),
    "row_adapters": ("lorakit.core.model", "row_adapters"),
    "delete_adapter": ("lorakit.core.model", "delete_adapter"),
    "trainable_summary": ("lorakit.core.model", "trainable_summary"),
    "merge": ("lorakit.core.merge", "merge"),
    "unmerge": ("lorakit.core.merge", "unmerge"),
    "merged_adapters": ("lorakit.core.merge", "merged_adapters"),
    "merge_and_unload": ("lorakit.core.merge", "merge_and_unload"),
    "unload": ("lorakit.core.merge", "unload"),
    "save_adapter": ("lorakit.core.files", "save_adapter"),
    "load_adapter": ("lorakit.core.files", "load_adapter"),
    "read_adapter": ("lorakit.core.files", "read_adapter"),
    "bases": ("lorakit.core.bases", None),
    "errors": ("lorakit.core.errors", None),
    "quant": ("lorakit.core.quant", None),
    "evaluate": ("lorakit.eval.runner", "evaluate"),
    "combine": ("lorakit.algebra", "combine"),
    "compress": ("lorakit.algebra", "compress"),
    "export_merged": ("lorakit.algebra", "export_merged"),
    "Trainer": ("lorakit.train", "Trainer"),
    "sweep": ("lorakit.sweep", None),  # callable: lk.sweep("sweep.yaml") runs a sweep
    "run_sweep": ("lorakit.sweep", "run_sweep"),
}

__all__ = [*_PUBLIC, "__version__"]

_aliases.install()


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        if _aliases.target_of(f"lorakit.{name}") is not None:  # an old module path, e.g. ``lorakit.model``
            return importlib.import_module(f"lorakit.{name}")
        raise AttributeError(f"module 'lorakit' has no attribute {name!r}")
    module_name, attribute = _PUBLIC[name]
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
