"""lorakit: the whole life of a LoRA adapter — inject, train, evaluate, inspect, merge, register and serve."""

__version__ = "0.1.0"

from lorakit import bases, errors  # noqa: E402
from lorakit.config import LoraConfig  # noqa: E402
from lorakit.io import load_adapter, read_adapter, save_adapter  # noqa: E402
from lorakit.merge import merge, merge_and_unload, unload, unmerge  # noqa: E402
from lorakit import registry  # noqa: E402  (registers the "registry:NAME@VERSION" adapter source; SQLAlchemy loads lazily)
from lorakit.model import (active_adapters, adapter_names, delete_adapter, disabled, inject,  # noqa: E402
                           row_adapters, set_active, trainable_summary)
from lorakit.eval.runner import evaluate  # noqa: E402
from lorakit.algebra import combine, compress, export_merged  # noqa: E402
from lorakit.train import Trainer  # noqa: E402

__all__ = [
    "LoraConfig", "inject", "set_active", "active_adapters", "adapter_names", "disabled", "row_adapters",
    "delete_adapter", "trainable_summary", "merge", "unmerge", "merge_and_unload", "unload", "save_adapter",
    "load_adapter", "read_adapter", "bases", "errors", "evaluate", "combine", "compress", "export_merged", "Trainer", "__version__",
]
