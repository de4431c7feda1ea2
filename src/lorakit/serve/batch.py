"""Rows generating together over one KV cache: left-padded prefill, one-token decode steps, joining and leaving.

Each row's prompt is left-padded to the longest in the batch; ``mask: (batch, length)`` marks real positions
and ``positions: (batch,)`` is each row's next position id (its number of real tokens), so every row computes
exactly what it would alone. Batches join by left-padding the shorter KV cache (``(batch, heads, length, dim)``
per layer) and concatenating rows; rows leave by selection, and columns that no remaining row uses are
dropped. Each batch carries one :class:`~lorakit.core.layers.RowRouting` (row → adapter) for all LoRA layers;
``solo_plans`` (adapter name → plans) lets every batch whose rows all use one adapter reuse that adapter's plans.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from lorakit.core.layers import RowRouting
from lorakit.core.modules import cache_argument


class Batch:
    """KV cache, attention mask, next positions and the adapter of every row; ``rows`` are the caller's objects."""

    def __init__(
        self,
        cache: DynamicCache,
        mask: torch.Tensor,
        positions: torch.Tensor,
        adapters: list[str | None],
        rows: list,
        solo_plans: dict[str, dict] | None = None,
    ) -> None:
        self.cache = cache
        self.mask = mask  # (batch, length) 1 = real token
        self.positions = positions  # (batch,)
        self.adapters = adapters
        self.rows = rows
        self.solo_plans = solo_plans
        solo = (
            adapters[0]
            if adapters and adapters[0] is not None and adapters.count(adapters[0]) == len(adapters)
            else None
        )
        plans = solo_plans.setdefault(solo, {}) if solo is not None and solo_plans is not None else None
        self.routing = RowRouting(adapters, mask.device, plans)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def length(self) -> int:
        return self.mask.shape[1]

    @property
    def kv(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(layer.keys, layer.values) for layer in self.cache.layers]  # each (batch, heads, length, dim)


def _route(layers: list, routing: RowRouting) -> None:
    if layers and layers[0].routing is not routing:
        for layer in layers:
            layer.routing = routing


def prefill(
    model,
    layers: list,
    prompts: list[list[int]],
    adapters: list[str | None],
    rows: list,
    pad_id: int,
    solo_plans: dict[str, dict] | None = None,
) -> tuple[Batch, torch.Tensor]:
    """Run the prompts (left-padded) through the model; returns the batch and last-position logits ``(n, vocab)``."""
    longest = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), longest), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, longest - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        mask[row, longest - len(prompt) :] = 1
    position_ids = (mask.cumsum(1) - 1).clamp(min=0)  # (n, longest)
    batch = Batch(DynamicCache(), mask, mask.sum(1), adapters, rows, solo_plans)
    _route(layers, batch.routing)
    out = model(
        input_ids=ids,
        attention_mask=mask,
        position_ids=position_ids,
        use_cache=True,
        logits_to_keep=1,
        **{cache_argument(type(model)): batch.cache},
    )
    return batch, out.logits[:, -1]


def decode(model, layers: list, batch: Batch, tokens: list[int]) -> torch.Tensor:
    """Append one token per row and return the next-token logits ``(batch, vocab)``."""
    ids = torch.tensor(tokens, dtype=torch.long).view(-1, 1)  # (batch, 1)
    batch.mask = F.pad(batch.mask, (0, 1), value=1)  # (batch, length + 1)
    _route(layers, batch.routing)
    out = model(
        input_ids=ids,
        attention_mask=batch.mask,
        position_ids=batch.positions.view(-1, 1),
        use_cache=True,
        **{cache_argument(type(model)): batch.cache},
    )
    batch.positions = batch.positions + 1
    return out.logits[:, -1]


def join(a: Batch | None, b: Batch) -> Batch:
    """One batch holding ``a``'s rows then ``b``'s, the shorter cache left-padded to the longer."""
    if a is None or not len(a):
        return b
    length = max(a.length, b.length)

    def pad(t: torch.Tensor, have: int) -> torch.Tensor:
        return F.pad(t, (0, 0, length - have, 0)) if have < length else t  # (batch, heads, length, dim)

    kv = [
        (torch.cat([pad(ka, a.length), pad(kb, b.length)]), torch.cat([pad(va, a.length), pad(vb, b.length)]))
        for (ka, va), (kb, vb) in zip(a.kv, b.kv)
    ]
    mask = torch.cat([F.pad(a.mask, (length - a.length, 0)), F.pad(b.mask, (length - b.length, 0))])
    return Batch(
        DynamicCache(ddp_cache_data=kv),
        mask,
        torch.cat([a.positions, b.positions]),
        a.adapters + b.adapters,
        a.rows + b.rows,
        a.solo_plans,
    )


def keep(batch: Batch, kept: list[int]) -> Batch | None:
    """The batch with only rows ``kept`` (indices), trimmed of columns no kept row uses; None when empty."""
    if not kept:
        return None
    if len(kept) == len(batch):
        return batch
    index = torch.tensor(kept, dtype=torch.long)
    mask = batch.mask.index_select(0, index)
    start = int(mask.any(0).nonzero()[0])  # first column some kept row uses
    kv = [(k.index_select(0, index)[:, :, start:], v.index_select(0, index)[:, :, start:]) for k, v in batch.kv]
    return Batch(
        DynamicCache(ddp_cache_data=kv),
        mask[:, start:],
        batch.positions.index_select(0, index),
        [batch.adapters[i] for i in kept],
        [batch.rows[i] for i in kept],
        batch.solo_plans,
    )
