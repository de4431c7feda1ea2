"""Per-row adapters in one batch with a constant number of matmuls per layer, whatever the adapter mix.

Row ``b`` of a batch uses adapter ``a(b)`` (rank ``r_a``, scale ``s_a``) or none, and a LoRA layer adds
``s_a · B_a (A_a x_b)`` to that row. Rows are grouped by the rank of their adapter, so adapters of different
ranks never pad one another. Per rank group, once per batch composition (cached on the :class:`RowRouting`):

* every row on one adapter (a homogeneous batch): the adapter's own ``A: (r, in)``, ``B: (out, r)`` are used
  as they are — two matmuls, the second accumulating into the base output (``addmm``);
* several adapters: the rows' factors are stacked once, ``Â: (n, in, r)`` and ``B̂: (n, r, out)`` with the
  scale folded into ``B̂``, and each step is two batched matmuls ``(n, T, in) @ Â -> (n, T, r) @ B̂``
  (gathered bmm: each row reads only its own adapter, for decode ``T = 1`` and prefill alike);
* several adapters, some shared by several rows: each distinct adapter is stacked once (``u`` of them) and its
  rows are gathered into one slab, ``(u, m·T, in)`` with ``m`` the most rows any of them has (short slabs are
  padded with a repeated row whose result is dropped), so every adapter's factors are read once per step
  however many rows use it — factor reads, not flops, bound a decode step. The gather costs a few more ops per
  layer, so it is used only when it saves at least ``GATHER_MIN_BYTES`` of factor reads in that layer.

Rows without an adapter in this layer are left out (``index_select`` / ``index_add_``); when a group covers
every row in order, no indexing happens at all. Plain LoRA only: DoRA and AdaLoRA adapters, and adapters with
dropout while training, take the layer's per-group path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

GATHER_MIN_BYTES = (
    256 * 1024
)  # factor bytes a gathered slab must save per layer to pay for its extra ops (~10 µs of reads)


@dataclass(slots=True)
class RankGroup:
    """Rows of one rank in one layer. ``rows`` is ``None`` when the group is every row of the batch in order.

    Shared: ``A: (in, r)`` and ``B: (r, out)`` (transposed views of the adapter's own factors), ``scale`` the
    adapter's. Stacked: ``A: (u, in, r)``, ``B: (u, r, out)`` already scaled, ``scale`` 1; with ``gather``
    (``(u·m,)`` batch row of each slab slot) and ``scatter`` (``(n,)`` slot of each of the group's rows) when
    ``u`` distinct adapters serve ``n > u`` rows, else one slab per row (``u = n``) and both None.
    """

    rows: torch.Tensor | None
    A: torch.Tensor
    B: torch.Tensor
    scale: float
    stacked: bool
    gather: torch.Tensor | None = None
    scatter: torch.Tensor | None = None


def fast_names(layer, routing) -> set[str]:
    """Adapters of ``routing`` this layer computes on the batched path: plain LoRA (no DoRA/AdaLoRA terms),
    and no dropout while training."""
    factors, magnitude, svd_form = layer.lora_A, layer.lora_magnitude, layer.lora_E  # hoisted: module lookups are slow
    return {
        name
        for name in routing.groups
        if name in factors
        and name not in magnitude
        and name not in svd_form
        and not (layer.training and layer.dropout_p[name] > 0)
    }


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
        names = list(dict.fromkeys(used))  # distinct, in first-row order
        if len(names) == 1:
            name = names[0]
            groups.append(RankGroup(index, lora_A[name].T, lora_B[name].T, layer.scaling[name], False))
            continue
        factor_bytes = lora_A[names[0]].numel() + lora_B[names[0]].numel()  # per adapter of this rank, in elements
        gathered = (len(used) - len(names)) * factor_bytes * lora_A[names[0]].element_size() >= GATHER_MIN_BYTES
        slabs = names if gathered else used  # without the gather, one slab per row (an adapter repeated by row)
        A = torch.stack([lora_A[name] for name in slabs]).transpose(
            1, 2
        )  # (u, r, in) -> (u, in, r), a view: bmm reads it fastest
        scales = torch.tensor([layer.scaling[name] for name in slabs], dtype=A.dtype, device=A.device)
        B = torch.stack([lora_B[name].T for name in slabs]) * scales.view(
            -1, 1, 1
        )  # (u, r, out) contiguous: 2× faster bmm
        if len(slabs) == len(used):
            groups.append(RankGroup(index, A, B, 1.0, True))
            continue
        members = {name: [row for row, used_by in zip(rows, used) if used_by == name] for name in names}
        m = max(len(rows_of) for rows_of in members.values())
        gather = [row for name in names for row in members[name] + members[name][:1] * (m - len(members[name]))]
        slot = {row: names.index(name) * m + k for name in names for k, row in enumerate(members[name])}
        as_index = dict(dtype=torch.long, device=routing.device)
        groups.append(
            RankGroup(
                index,
                A,
                B,
                1.0,
                True,
                torch.tensor(gather, **as_index),
                torch.tensor([slot[row] for row in rows], **as_index),
            )
        )
    slow = [name for name in routing.groups if name in lora_A and name not in ranks]
    if not torch.is_grad_enabled():
        routing.plans[key] = (groups, slow)
    return groups, slow


def add_rows(layer, x: torch.Tensor, out: torch.Tensor, groups: list[RankGroup]) -> torch.Tensor:
    """``out[rows] += s · B (A x[rows])`` for each rank group; ``x: (batch, ..., in)``, ``out: (batch, ..., out)``.

    Every op is a plain ``mm``/``bmm`` on precomputed (transposed) factors: a decode step pays the dispatcher
    as little as possible per layer."""
    autocast = torch.is_autocast_enabled(x.device.type)
    in_features, out_features = layer.in_features, layer.out_features
    in_place = not out._is_view()
    for group in groups:
        A = group.A
        if group.gather is not None:
            h = x.index_select(0, group.gather)  # (u·m, ..., in): each distinct adapter's rows, padded to m
        else:
            h = x if group.rows is None else x.index_select(0, group.rows)
        if h.dtype != A.dtype and not autocast:
            h = h.to(A.dtype)
        fused = group.rows is None and group.gather is None and not autocast and out.dtype == A.dtype and in_place
        if not group.stacked:
            xa = torch.mm(h.reshape(-1, in_features), A)  # (n·T, in) @ (in, r) -> (n·T, r)
            if fused:
                out.view(-1, out_features).addmm_(xa, group.B, alpha=group.scale)  # += s · (n·T, r) @ (r, out)
                continue
            delta = torch.mm(xa, group.B)  # (n·T, r) @ (r, out) -> (n·T, out)
        elif group.gather is None:
            n = h.shape[0]
            xa = torch.bmm(h.reshape(n, -1, in_features), A)  # (n, T, in) @ (n, in, r) -> (n, T, r)
            if fused:
                out.view(n, -1, out_features).baddbmm_(xa, group.B)  # += (n, T, r) @ (n, r, out)
                continue
            delta = torch.bmm(xa, group.B)  # (n, T, r) @ (n, r, out) -> (n, T, out)
        else:
            u = A.shape[0]
            xa = torch.bmm(h.reshape(u, -1, in_features), A)  # (u, m·T, in) @ (u, in, r) -> (u, m·T, r)
            slots = torch.bmm(xa, group.B)  # (u, m·T, r) @ (u, r, out) -> (u, m·T, out)
            delta = slots.reshape(group.gather.shape[0], -1).index_select(0, group.scatter)  # (n, T·out), rows in order
        delta = delta.reshape(-1, *out.shape[1:]).to(out.dtype)
        if group.rows is None:
            out = out.add_(delta, alpha=group.scale) if in_place else out.add(delta, alpha=group.scale)
        elif in_place:
            out.index_add_(0, group.rows, delta, alpha=group.scale)
        else:
            out = out.index_add(0, group.rows, delta, alpha=group.scale)
    return out
