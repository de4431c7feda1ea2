"""LoRA layer types. One layer type serves training and serving (per-row routing)."""

from lorakit.core.layers.base import LoraLayer, RowRouting
from lorakit.core.layers.embedding import LoraEmbedding
from lorakit.core.layers.linear import LoraLinear, linear_shape
from lorakit.core.layers.saved_module import ModulesToSave

__all__ = ["LoraLayer", "LoraLinear", "LoraEmbedding", "ModulesToSave", "RowRouting", "linear_shape"]
