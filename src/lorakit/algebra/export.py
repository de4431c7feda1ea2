"""Merge adapters into their base and write a complete transformers model directory.

``W ← W + Σᵢ wᵢ·sᵢ·Bᵢ·Aᵢ`` is computed in fp32 on the fp32 base (checked for NaN/inf), then the model is cast to
the requested dtype (checked again: fp16 overflows where fp32 does not) and saved with its tokenizer and
generation config, so ``AutoModelForCausalLM.from_pretrained(out)`` loads it with no lorakit installed.

Tied embeddings: when the input embedding and the output head share one tensor (SmolLM2 does) and an adapter
changes either, the unmerged model changes only one of them. The export follows the one rule of
:mod:`lorakit.core.merge` (the adapted side gets its own copy, ``tie_word_embeddings: false``), so the merged
model computes what the unmerged one did, as ``lk.merge`` and ``lk.merge_and_unload`` do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lorakit._version import __version__
from lorakit.algebra.factors import base_of, load, parent_record
from lorakit.core import bases
from lorakit.core.errors import ConfigError, MergeError
from lorakit.core.files import atomic, load_adapter
from lorakit.core.merge import merge_and_unload
from lorakit.core.model import lora_layers

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PROVENANCE_FILE = "lorakit_merge.json"


@dataclass
class ExportResult:
    path: Path
    base: str
    dtype: str
    untied_embeddings: bool


def export_merged(
    adapters: list[tuple[str | Path, float]],
    out: str | Path,
    *,
    base: str | None = None,
    dtype: str = "fp32",
    safe: bool = True,
    overwrite: bool = False,
) -> ExportResult:
    """Merge ``adapters`` (each ``(source, weight)``) into their base and save a transformers model at ``out``.

    The base is ``base``, else the first adapter's recorded base, else the embedded default; every adapter is
    checked against it (fingerprint, keys, shapes) before anything is merged. ``out`` is written atomically and
    must be absent or empty unless ``overwrite``, which replaces what it holds.

    Raises:
        ConfigError: an unknown ``dtype``, no adapter, or a weight that is not finite (or not 1 for DoRA).
        OutputExistsError: ``out`` is a file or a non-empty directory and ``overwrite`` is false (checked
            before the base loads; nothing is written).
        MergeError: a merge would write NaN/inf, or a layer cannot be merged (a LoRA on a grouped convolution).
    """
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if not adapters:
        raise ConfigError("merge needs at least one adapter")
    atomic.check_output(out, overwrite=overwrite)
    parents = [(load(source), float(weight)) for source, weight in adapters]
    for parent, weight in parents:
        if not torch.isfinite(torch.tensor(weight)):
            raise ConfigError(f"weight of {parent.path} must be a finite number, got {weight}")
        if parent.is_dora and weight != 1.0:
            raise ConfigError(f"{parent.path} is a DoRA adapter: it merges only with weight 1 (got {weight})")
    base_name = base_of(parents[0][0].files, base)
    model, tokenizer = bases.load(base_name, dtype=torch.float32)
    names = []
    for i, (parent, weight) in enumerate(parents):
        name = f"merge{i}"
        load_adapter(model, parent.path, name=name)
        for _, layer in lora_layers(model):
            if name in layer.scaling:
                layer.scaling[name] *= weight  # ΔW of this adapter becomes w·s·B·A
        names.append(name)
    was_tied = bool(getattr(model.config, "tie_word_embeddings", False))
    plain = merge_and_unload(model, names, safe=safe)
    untied = was_tied and not plain.config.tie_word_embeddings
    plain.to(DTYPES[dtype])
    if safe and dtype == "fp16":  # the fp32 merge was checked; bf16 has fp32's range, fp16 overflows past 65504
        check_finite(plain, dtype)
    with atomic.directory(out) as staging:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        provenance = {
            "lorakit_version": __version__,
            "base": base_name,
            "dtype": dtype,
            "untied_embeddings": untied,
            "merged": [parent_record(p, w) for p, w in parents],
        }
        (staging / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
    return ExportResult(Path(out), base_name, dtype, untied)


def check_finite(model: nn.Module, dtype: str) -> None:
    for name, param in model.named_parameters():
        if param.dtype.is_floating_point and not torch.isfinite(param).all():
            raise MergeError(f"merged weight {name} has NaN/inf in {dtype}; {dtype} overflowed: export in bf16 or fp32")


def parse_weighted(spec: str) -> tuple[str, float]:
    """``path:0.7`` -> ``("path", 0.7)``; a spec whose last ``:`` part is not a number has weight 1."""
    head, sep, tail = spec.rpartition(":")
    if sep and head:
        try:
            return head, float(tail)
        except ValueError:
            pass
    return spec, 1.0
