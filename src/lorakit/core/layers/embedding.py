"""LoraEmbedding: ``h = E₀[ids] + scale · Aᵀ[ids] · Bᵀ`` around ``nn.Embedding``.

Embeddings that scale their own output (Gemma3's ``Gemma3TextScaledWordEmbedding`` returns ``E₀[ids]·c``
with ``c = embed_scale = √dim``) get the LoRA delta scaled by the same ``c``, as PEFT does
(``LoraLayer._get_embed_scale``), so the adapter acts on what the model sees and merging ``ΔE`` into ``E₀``
(which the module then scales) changes nothing. Models that scale after the embedding module (Gemma, Gemma2)
scale the delta with it by themselves.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.core.errors import ConfigError
from lorakit.core.layers.base import LoraLayer


class LoraEmbedding(LoraLayer):
    """LoRA around an embedding table ``E₀: (num_embeddings, dim)``.

    ``A: (r, num_embeddings)``, ``B: (dim, r)`` (PEFT's ``lora_embedding_A``/``lora_embedding_B``);
    ΔE = scale · (B·A)ᵀ. A starts at zero and B normal, so a fresh adapter changes nothing.
    """

    def __init__(self, base_layer: nn.Embedding) -> None:
        super().__init__(base_layer, base_layer.num_embeddings, base_layer.embedding_dim)

    def add_adapter(self, name: str, r: int, scale: float, dropout: float, init: str = "default") -> None:
        """:meth:`LoraLayer.add_adapter`, after checking that the embedding's own output scale can be applied."""
        self.embed_scale()
        super().add_adapter(name, r, scale, dropout, init)

    def embed_scale(self) -> torch.Tensor | None:
        """The factor ``c`` the wrapped embedding multiplies its output by (its ``embed_scale``), or None.

        Raises:
            ConfigError: ``embed_scale`` is not a scalar (PEFT would skip it with a warning; lorakit refuses).
        """
        scale = getattr(self.base_layer, "embed_scale", None)
        if scale is None:
            return None
        if isinstance(scale, (int, float)):
            return torch.tensor(float(scale))
        if isinstance(scale, torch.Tensor) and scale.numel() == 1:
            return scale
        shape = tuple(scale.shape) if isinstance(scale, torch.Tensor) else type(scale).__name__
        raise ConfigError(
            f"layer {self.path}: embedding has embed_scale of shape {shape}, not a scalar; LoRA cannot "
            "scale its delta like the model scales this embedding: exclude it from the targets"
        )

    def reset_adapter(self, name: str, init: str = "default") -> None:
        with torch.no_grad():
            nn.init.zeros_(self.lora_A[name])
            nn.init.normal_(self.lora_B[name])

    def delta_weight(self, name: str) -> torch.Tensor:
        return (
            self.scaling[name] * (self.lora_B[name].float() @ self.lora_A[name].float()).T
        )  # ((dim, r)(r, n))ᵀ -> (n, dim)

    def _lookup(self, ids: torch.Tensor, name: str) -> torch.Tensor:
        base = self.base_layer
        after_a = F.embedding(
            ids,
            self.lora_A[name].T,
            base.padding_idx,
            base.max_norm,
            base.norm_type,
            base.scale_grad_by_freq,
            base.sparse,
        )  # (..., r)
        delta = after_a @ self.lora_B[name].T  # (..., r) @ (r, dim) -> (..., dim)
        scale = self.embed_scale()
        return delta if scale is None else delta * scale.to(delta.dtype)  # c · (..., dim), as the base output

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """``h = E₀[ids] + Σₐ sₐ · Aₐᵀ[ids] · Bₐᵀ`` over the active adapters not merged into ``E₀``.

        Shapes: ``ids: (...)`` integer → ``h: (..., dim)``; ``Aₐ: (r, num_embeddings)``, ``Bₐ: (dim, r)``. A row of
        ``Aᵀ`` is looked up per token (``(..., r)``, no one-hot matmul) and mapped by ``Bᵀ`` to ``(..., dim)``.
        With a :class:`RowRouting` set, each row of the batch gets its own adapter (or none).

        Source: Hu et al., "LoRA" (2021), applied to the embedding table as PEFT's ``lora.Embedding`` does.
        """
        out = self.base_layer(ids)  # E₀[ids]: (...) -> (..., dim)
        routing = self._check_routing()
        if routing is not None:
            for name, rows in routing.groups.items():
                if name in self.lora_A:
                    delta = self._lookup(ids.index_select(0, rows), name)  # (n_rows, ..., dim)
                    out = out.index_add(0, rows, delta.to(out.dtype), alpha=self.scaling[name])
            return out
        for name in self._unmerged_active():
            out = out + self.scaling[name] * self._lookup(ids, name).to(out.dtype)  # (..., dim)
        return out
