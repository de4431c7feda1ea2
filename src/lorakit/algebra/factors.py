"""An adapter as a set of low-rank factors: ``ΔW = scale · B·A`` per module, read from and written to files.

Everything in :mod:`lorakit.algebra` works on these factors without a model. A linear module stores
``A: (r, in)``, ``B: (out, r)``; an embedding stores PEFT's ``lora_embedding_A: (r, num_embeddings)`` and
``lora_embedding_B: (dim, r)``, whose product is the transpose of the table's update — the algebra
(sums, SVDs, element-wise pruning) does not care about that layout, so both are handled alike.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lorakit.core.errors import AdapterFileError, ConfigError
from lorakit.core.files import AdapterFiles, read_adapter
from lorakit.core.files.peft_format import PREFIX, WEIGHTS_FILE

_SUFFIXES = {  # PEFT key suffix -> (factor, kind)
    ".lora_A.weight": ("A", "linear"),
    ".lora_B.weight": ("B", "linear"),
    ".lora_embedding_A": ("A", "embedding"),
    ".lora_embedding_B": ("B", "embedding"),
}
_DORA_SUFFIX = ".lora_magnitude_vector"


@dataclass(frozen=True)
class LowRank:
    """One module's update ``ΔW = scale · B·A``; ``B: (out, r)``, ``A: (r, in)``; ``kind`` is linear or embedding."""

    A: torch.Tensor
    B: torch.Tensor
    scale: float
    kind: str

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        return self.B.shape[0], self.A.shape[1]

    def dense(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The full ``(out, in)`` matrix. Only the element-wise methods (ties, dare, pruning) need it."""
        return self.scale * (self.B.to(dtype) @ self.A.to(dtype))  # (out, r) @ (r, in) -> (out, in)


@dataclass
class Adapter:
    """An adapter read for algebra: its files, its modules' factors by module name, and its other tensors."""

    files: AdapterFiles
    modules: dict[str, LowRank]
    extras: dict[str, torch.Tensor]
    source: str

    @property
    def path(self) -> Path:
        return self.files.path

    @property
    def is_dora(self) -> bool:
        return self.files.config.use_dora or any(k.endswith(_DORA_SUFFIX) for k in self.extras)

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.modules.values())).A.dtype


def module_key(module: str, factor: str, kind: str) -> str:
    """PEFT key of a module's ``A`` or ``B`` factor."""
    if kind == "embedding":
        return f"{PREFIX}{module}.lora_embedding_{factor}"
    return f"{PREFIX}{module}.lora_{factor}.weight"


def load(source: str | Path | AdapterFiles) -> Adapter:
    """Read an adapter directory (or ``scheme:ref``) into factors; checks that every module has A and B of one rank."""
    files = source if isinstance(source, AdapterFiles) else read_adapter(source)
    parts: dict[str, dict[str, Any]] = {}
    extras: dict[str, torch.Tensor] = {}
    for key, tensor in files.tensors.items():
        match = next(((s, v) for s, v in _SUFFIXES.items() if key.endswith(s) and key.startswith(PREFIX)), None)
        if match is None:
            extras[key] = tensor
            continue
        suffix, (factor, kind) = match
        module = key[len(PREFIX) : -len(suffix)]
        parts.setdefault(module, {"kind": kind})[factor] = tensor
    where = files.path / WEIGHTS_FILE
    modules = {}
    for module, found in parts.items():
        if "A" not in found or "B" not in found:
            missing = "lora_B" if "A" in found else "lora_A"
            raise AdapterFileError(f"{where}: module {module} has no {missing} tensor; the file is incomplete")
        A, B = found["A"], found["B"]
        if A.dim() != 2 or B.dim() != 2 or A.shape[0] != B.shape[1]:
            raise AdapterFileError(
                f"{where}: module {module} has A of shape {tuple(A.shape)} and B of shape "
                f"{tuple(B.shape)}; expected (r, in) and (out, r) with one r"
            )
        if files.config.rank_for(module) != A.shape[0]:
            raise AdapterFileError(
                f"{where}: module {module} has rank {A.shape[0]} but the config says "
                f"{files.config.rank_for(module)}; adapter_config.json does not match the weights"
            )
        modules[module] = LowRank(A, B, files.config.scale_for(module), found["kind"])
    if not modules:
        raise AdapterFileError(f"{where}: no LoRA tensors (lora_A/lora_B) found")
    return Adapter(files, modules, extras, str(source if not isinstance(source, AdapterFiles) else files.path))


def weights_sha256(path: Path) -> str:
    """sha256 of an adapter's ``adapter_model.safetensors``: the identity of its weights."""
    digest = hashlib.sha256()
    with open(path / WEIGHTS_FILE, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def parent_record(adapter: Adapter, weight: float | None = None) -> dict[str, Any]:
    """One entry of ``lineage.parents``: where the parent was (and its registry reference when it came from
    one), the sha256 of its ``adapter_model.safetensors``, and its weight."""
    record: dict[str, Any] = {"path": str(adapter.path.resolve()), "sha256": weights_sha256(adapter.path)}
    if adapter.source.startswith("registry:"):
        record["registry"] = adapter.source[len("registry:") :]  # "name@version", as the registry reads it
    if weight is not None:
        record["weight"] = weight
    return record


def reject_dora(adapter: Adapter, operation: str) -> None:
    if adapter.is_dora:
        raise ConfigError(
            f"{adapter.path}: is a DoRA adapter; {operation} re-factors B·A, which would change DoRA's "
            "learned magnitudes — merge it into the base instead (lorakit merge)"
        )


def base_of(files: AdapterFiles, override: str | None = None) -> str:
    """The base model an adapter belongs to: ``override``, else ``lorakit.json``'s base, else the PEFT config's,
    else the embedded default."""
    from lorakit.core.bases import DEFAULT_BASE

    return (
        override
        or files.meta.get("base", {}).get("name_or_path")
        or files.raw_config.get("base_model_name_or_path")
        or DEFAULT_BASE
    )
