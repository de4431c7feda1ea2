"""Per-row adapters in one batch with a constant number of matmuls per layer, whatever the adapter mix.

Row ``b`` of a batch uses adapter ``a(b)`` (rank ``r_a``, scale ``s_a``) or none, and a LoRA layer adds
``s_a · B_a (A_a x_b)`` to that row. Rows are grouped by the rank of their adapter, so adapters of different
ranks never pad one another. Per rank group, once per batch composition (cached on the :class:`RowRouting`):

* every row on one adapter (a homogeneous batch): the adapter's own ``A: (r, in)``, ``B: (out, r)`` are used
  as they are — two matmuls, the second accumulating into the base output (``addmm``);
* several adapters: the rows' factors are stacked once, ``Â: (n, in, r)`` and ``B̂: (n, r, out)`` with the
  scale folded into ``B̂``, and each step is two batched matmuls ``(n, T, in) @ Â -> (n, T, r) @ B̂``
  (gathered bmm: each row reads only its own adapter, for decode ``T = 1`` and prefill alike).

Rows without an adapter in this layer are left out (``index_select`` / ``index_add_``); when a group covers
every row in order, no indexing happens at all. Plain LoRA only: DoRA and AdaLoRA adapters, and adapters with
dropout while training, take the layer's per-group path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class RankGroup:
    """Rows of one rank in one layer. ``rows`` is ``None`` when the group is every row of the batch in order.

    Shared: ``A: (r, in)``, ``B: (r, out)`` (a transposed view), ``scale`` the adapter's. Stacked:
    ``A: (n, in, r)``, ``B: (n, r, out)`` already scaled, ``scale`` 1.
    """

    rows: torch.Tensor | None
    A: torch.Tensor
    B: torch.Tensor
    scale: float
    stacked: bool


def fast_names(layer, routing) -> set[str]:
    """Adapters of ``routing`` this layer computes on the batched path: plain LoRA (no DoRA/AdaLoRA terms),
    and no dropout while training."""
    factors, magnitude, svd_form = layer.lora_A, layer.lora_magnitude, layer.lora_E  # hoisted: module lookups are slow
    return {name for name in routing.groups
            if name in factors and name not in magnitude and name not in svd_form
            and not (layer.training and layer.dropout_p[name] > 0)}


def plan(layer, routing) -> tuple[list[RankGroup], list[str]]:
    """The rank groups of ``layer`` for this batch, and the adapters left to the per-group path; cached on
    ``routing`` when no gradient is recorded."""
    key = (id(layer), layer.training)
    cached = routing.plans.get(key)
    if cached is not None:
        return cached
    lora_A, lora_B = layer.lora_A, layer.lora_B
    ranks = {name: lora_A[name].shape[0] for name in fast_names(layer, routing)}
    rows_by_rank: dict[int, list[int]] = {}
    for row, name in enumerate(routing.row_adapters):
        if name in ranks:
            rows_by_rank.setdefault(ranks[name], []).append(row)
    batch = len(routing.row_adapters)
    groups = []
    for rows in rows_by_rank.values():
        index = None if rows == list(range(batch)) else torch.tensor(rows, dtype=torch.long, device=routing.device)
        used = [routing.row_adapters[row] for row in rows]
        if len(set(used)) == 1:
            name = used[0]
            groups.append(RankGroup(index, lora_A[name], lora_B[name].T, layer.scaling[name], False))
            continue
        A = torch.stack([lora_A[name] for name in used]).transpose(1, 2)  # (n, r, in) -> (n, in, r), a view: bmm reads it fastest
        scales = torch.tensor([layer.scaling[name] for name in used], dtype=A.dtype, device=A.device)
        B = torch.stack([lora_B[name].T for name in used]) * scales.view(-1, 1, 1)  # (n, r, out) contiguous: 2× faster bmm
        groups.append(RankGroup(index, A, B, 1.0, True))
    slow = [name for name in routing.groups if name in lora_A and name not in ranks]
    if not torch.is_grad_enabled():
        routing.plans[key] = (groups, slow)
    return groups, slow


def add_rows(layer, x: torch.Tensor, out: torch.Tensor, groups: list[RankGroup]) -> torch.Tensor:
    """``out[rows] += s · B (A x[rows])`` for each rank group; ``x: (batch, ..., in)``, ``out: (batch, ..., out)``."""
    autocast = torch.is_autocast_enabled(x.device.type)
    for group in groups:
        h = x if group.rows is None else x.index_select(0, group.rows)
        n = h.shape[0]
        if h.dtype != group.A.dtype and not autocast:
            h = h.to(group.A.dtype)
        fused = group.rows is None and not autocast and out.dtype == group.A.dtype and not out._is_view()
        if group.stacked:
            xa = torch.bmm(h.reshape(n, -1, layer.in_features), group.A)  # (n, T, in) @ (n, in, r) -> (n, T, r)
            if fused:
                out.view(n, -1, layer.out_features).baddbmm_(xa, group.B)  # += (n, T, r) @ (n, r, out)
                continue
            delta = torch.bmm(xa, group.B)  # (n, T, r) @ (n, r, out) -> (n, T, out)
        else:
            xa = F.linear(h.reshape(-1, layer.in_features), group.A)  # (n·T, in) @ (in, r) -> (n·T, r)
            if fused:
                out.view(-1, layer.out_features).addmm_(xa, group.B, alpha=group.scale)  # += s · (n·T, r) @ (r, out)
                continue
            delta = torch.mm(xa, group.B)  # (n·T, r) @ (r, out) -> (n·T, out)
        delta = delta.reshape(n, *out.shape[1:]).to(out.dtype)
        if group.rows is None:
            out = out.add(delta, alpha=group.scale) if out._is_view() else out.add_(delta, alpha=group.scale)
        elif out._is_view():
            out = out.index_add(0, group.rows, delta, alpha=group.scale)
        else:
            out.index_add_(0, group.rows, delta, alpha=group.scale)
    return out
