"""Write a set of low-rank factors as an ordinary adapter directory (PEFT layout + ``lorakit.json`` with lineage).

Each module's scale is folded into its ``A`` and its alpha set equal to its rank, so every module has
scale ``α/r = 1`` — under PEFT's per-module ``rank_pattern``/``alpha_pattern`` and under servers that read
only the global ``r`` and ``lora_alpha`` alike. The most common rank is the global ``r``; the others go into
``rank_pattern`` (and ``alpha_pattern``) by full module name.
"""

from __future__ import annotations

import datetime as _dt
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from lorakit._version import __version__
from lorakit.algebra.factors import Adapter, LowRank, module_key
from lorakit.core.config import LoraConfig
from lorakit.core.files import write_adapter
from lorakit.core.files.peft_format import config_to_peft


def _targets(parents: list[Adapter], modules: list[str]) -> dict[str, Any]:
    """Target fields that select exactly ``modules``: the parents' own when they agree or are plain lists,
    else full names.
    """
    configs = [p.files.config for p in parents]
    selections = {(str(c.targets), str(c.layers), str(c.layers_pattern), str(c.exclude)) for c in configs}
    if len(selections) == 1:
        first = configs[0]
        return {
            "targets": first.targets,
            "layers": first.layers,
            "layers_pattern": first.layers_pattern,
            "exclude": first.exclude,
        }
    if all(isinstance(c.targets, list) and c.layers is None and c.exclude is None for c in configs):
        union = sorted({t for c in configs for t in c.targets})
        return {"targets": union, "layers": None, "layers_pattern": None, "exclude": None}
    return {"targets": sorted(modules), "layers": None, "layers_pattern": None, "exclude": None}


def output_dtype(parents: list[Adapter]) -> torch.dtype:
    dtype = parents[0].dtype
    for parent in parents[1:]:
        dtype = torch.promote_types(dtype, parent.dtype)
    return dtype


def write(
    directory: str | Path,
    modules: dict[str, LowRank],
    parents: list[Adapter],
    lineage: dict[str, Any],
    *,
    extras_from: Adapter | None = None,
    notes: list[str] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``modules`` as an adapter directory whose config and metadata derive from ``parents``.

    ``extras_from`` contributes its non-LoRA tensors (saved modules, biases) and the config fields naming them.
    """
    dtype = dtype or output_dtype(parents)
    ranks = Counter(m.rank for m in modules.values())
    top = max(ranks.values())
    r = max(rank for rank, count in ranks.items() if count == top)
    pattern = {name: m.rank for name, m in modules.items() if m.rank != r}
    template = (extras_from or parents[0]).files.config
    config = LoraConfig(
        r=r,
        alpha=float(r),
        dropout=template.dropout,
        rank_pattern=pattern,
        alpha_pattern={name: float(rank) for name, rank in pattern.items()},
        bias=extras_from.files.config.bias if extras_from else "none",
        modules_to_save=extras_from.files.config.modules_to_save if extras_from else None,
        task_type=template.task_type,
        base_model_name_or_path=template.base_model_name_or_path,
        **_targets(parents, list(modules)),
    )
    tensors: dict[str, torch.Tensor] = {}
    for name, m in modules.items():
        tensors[module_key(name, "A", m.kind)] = (
            (m.A.double() * m.scale).to(dtype).contiguous()
        )  # scale folded: α/r = 1
        tensors[module_key(name, "B", m.kind)] = m.B.to(dtype).contiguous()
    if extras_from is not None:
        tensors.update(extras_from.extras)
    fan_in_fan_out = any(p.files.raw_config.get("fan_in_fan_out") for p in parents)
    peft_config = config_to_peft(config, [n.rsplit(".", 1)[-1] for n in modules], fan_in_fan_out)
    peft_config["base_model_name_or_path"] = template.base_model_name_or_path
    meta: dict[str, Any] = {
        "lorakit_version": __version__,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "lineage": lineage,
    }
    base = next((p.files.meta["base"] for p in parents if p.files.meta.get("base")), None)
    if base is not None:
        meta["base"] = base
    if notes:
        meta["notes"] = notes
    return write_adapter(directory, peft_config, tensors, meta)
