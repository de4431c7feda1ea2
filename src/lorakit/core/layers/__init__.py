"""LoRA layer types. One layer type serves training and serving (per-row routing)."""

from lorakit.core.layers.base import LoraLayer, RowRouting
from lorakit.core.layers.conv import LoraConv
from lorakit.core.layers.embedding import LoraEmbedding
from lorakit.core.layers.linear import LoraLinear, linear_shape
from lorakit.core.layers.saved_module import ModulesToSave

LAYER_TYPES = {"linear": LoraLinear, "embedding": LoraEmbedding, "conv": LoraConv}
"""The LoRA layer class for each kind of module :func:`lorakit.core.targeting.layer_kind` names."""

__all__ = [
    "LAYER_TYPES",
    "LoraLayer",
    "LoraLinear",
    "LoraEmbedding",
    "LoraConv",
    "ModulesToSave",
    "RowRouting",
    "linear_shape",
]
