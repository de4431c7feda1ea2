"""LoRA layer types. One layer type serves training and serving (per-row routing)."""

from lorakit.layers.base import LoraLayer, RowRouting
from lorakit.layers.embedding import LoraEmbedding
from lorakit.layers.linear import LoraLinear, linear_shape
from lorakit.layers.saved_module import ModulesToSave

__all__ = ["LoraLayer", "LoraLinear", "LoraEmbedding", "ModulesToSave", "RowRouting", "linear_shape"]
