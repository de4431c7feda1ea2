"""LoraEmbedding: ``h = E₀[ids] + scale · Aᵀ[ids] · Bᵀ`` around ``nn.Embedding``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.core.layers.base import LoraLayer


class LoraEmbedding(LoraLayer):
    """LoRA around an embedding table ``E₀: (num_embeddings, dim)``.

    ``A: (r, num_embeddings)``, ``B: (dim, r)`` (PEFT's ``lora_embedding_A``/``lora_embedding_B``);
    ΔE = scale · (B·A)ᵀ. A starts at zero and B normal, so a fresh adapter changes nothing.
    """

    def __init__(self, base_layer: nn.Embedding) -> None:
        super().__init__(base_layer, base_layer.num_embeddings, base_layer.embedding_dim)

    def reset_adapter(self, name: str, init: str = "default") -> None:
        with torch.no_grad():
            nn.init.zeros_(self.lora_A[name])
            nn.init.normal_(self.lora_B[name])

    def delta_weight(self, name: str) -> torch.Tensor:
        return self.scaling[name] * (self.lora_B[name].float() @ self.lora_A[name].float()).T  # ((dim, r)(r, n))ᵀ -> (n, dim)

    def _lookup(self, ids: torch.Tensor, name: str) -> torch.Tensor:
        base = self.base_layer
        after_a = F.embedding(ids, self.lora_A[name].T, base.padding_idx, base.max_norm, base.norm_type,
                              base.scale_grad_by_freq, base.sparse)  # (..., r)
        return after_a @ self.lora_B[name].T  # (..., r) @ (r, dim) -> (..., dim)

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
