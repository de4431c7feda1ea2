"""Read an adapter directory in PEFT's layout — config, tensors, lorakit metadata — without touching a model.

An adapter directory holds ``adapter_config.json`` (PEFT's fields), ``adapter_model.safetensors`` (PEFT's
key names) and ``lorakit.json`` (base fingerprint, version, creation time, provenance). Pickle files are
never read. Everything is checked before any model is touched: ``lorakit.json`` against its schema
(:mod:`lorakit.core.files.meta_schema`), and every tensor — a LoRA factor must be floating point, and no
floating tensor may hold NaN or ±inf (an adapter carrying one would silently turn every output into NaN).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from lorakit.core.config import LoraConfig
from lorakit.core.errors import AdapterFileError
from lorakit.core.files.meta_schema import check_meta
from lorakit.core.files.peft_format import CONFIG_FILE, WEIGHTS_FILE, config_from_peft

META_FILE = "lorakit.json"
SOURCE_GROUP = "lorakit.adapter_sources"
_resolvers: dict[str, Callable[[str], Path]] = {}


def register_resolver(scheme: str, resolve: Callable[[str], Path]) -> None:
    """Let ``load_adapter(model, "<scheme>:<ref>")`` find adapter directories elsewhere (the registry does)."""
    _resolvers[scheme] = resolve


@dataclass
class AdapterFiles:
    """An adapter read from disk: its config, its tensors by PEFT key, and lorakit's metadata (may be empty)."""

    path: Path
    config: LoraConfig
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)
    raw_config: dict[str, Any] = field(default_factory=dict)

    @property
    def base_fingerprint(self) -> str | None:
        return self.meta.get("base", {}).get("fingerprint")


def resolve_source(source: str | Path) -> Path:
    """The directory ``source`` names: a path, or ``SCHEME:REF`` for a scheme registered with
    :func:`register_resolver` or declared in the ``lorakit.adapter_sources`` entry point group (the registry's
    ``registry:NAME@VERSION``). Raises :class:`AdapterFileError` for a known scheme nothing can resolve."""
    text = str(source)
    scheme, sep, ref = text.partition(":")
    if not sep or len(scheme) < 2:  # a bare path, or a Windows drive letter
        return Path(source)
    if scheme not in _resolvers:
        for entry in entry_points(group=SOURCE_GROUP, name=scheme):
            _resolvers[scheme] = entry.load()
    if scheme in _resolvers:
        return Path(_resolvers[scheme](ref))
    if scheme == "registry":
        raise AdapterFileError(f"{text}: no registry is installed to resolve it; reinstall lorakit or pass a directory")
    return Path(source)


def read_adapter(source: str | Path, device: str | torch.device = "cpu") -> AdapterFiles:
    """Read and check an adapter directory (or ``registry:name@version``) without touching any model; tensors
    are read straight onto ``device`` (e.g. the model's, so attaching them copies nothing).

    Raises :class:`AdapterFileError` (missing, pickled, unreadable or damaged files, NaN/±inf values)."""
    path = resolve_source(source)
    if not path.is_dir():
        raise AdapterFileError(f"{path}: adapter directory not found")
    config_path, weights_path = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not config_path.exists():
        raise AdapterFileError(f"{path}: no {CONFIG_FILE}; an adapter directory holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    if not weights_path.exists():
        pickled = [p.name for p in path.glob("*.bin")]
        hint = (
            f" ({pickled[0]} is a pickle file, which lorakit never reads: convert it to safetensors)" if pickled else ""
        )
        raise AdapterFileError(f"{path}: no {WEIGHTS_FILE}{hint}")
    raw = _read_json(config_path)
    config = config_from_peft(raw, str(config_path))
    tensors = check_tensors(_read_safetensors(weights_path, device), weights_path)
    meta = check_meta(_read_json(path / META_FILE), path / META_FILE) if (path / META_FILE).exists() else {}
    return AdapterFiles(path, config, tensors, meta, raw)


def check_tensors(tensors: dict[str, torch.Tensor], path: str | Path) -> dict[str, torch.Tensor]:
    """``tensors`` if every LoRA factor (a ``lora_`` key) is floating point and no floating tensor is NaN/±inf.

    One pass over the values: each floating tensor's fp32 sum is finite unless it holds NaN/±inf (or the sum of
    large finite values overflows), and all the sums are checked at once; only when one is not finite are that
    tensor's values counted, and a tensor with none non-finite passes.

    Raises:
        AdapterFileError: naming the file, the tensor (its layer path), its dtype or how many values are not finite.
    """
    for key, tensor in tensors.items():
        if ".lora_" in key and not tensor.is_floating_point():
            raise AdapterFileError(
                f"{path}: tensor {key} is {str(tensor.dtype).removeprefix('torch.')}, not floating "
                "point; LoRA factors are float32/float16/bfloat16 — the file is damaged or not an adapter"
            )
    floating = [(key, tensor) for key, tensor in tensors.items() if tensor.is_floating_point() and tensor.numel()]
    if not floating or bool(torch.isfinite(torch.stack([t.sum(dtype=torch.float32) for _, t in floating])).all()):
        return tensors
    for key, tensor in floating:
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            nan = int(torch.isnan(tensor).sum())
            raise AdapterFileError(
                f"{path}: tensor {key} holds {bad} non-finite value(s) ({nan} NaN, {bad - nan} "
                f"inf) of {tensor.numel()}; the adapter was saved from a diverged run — use an "
                "earlier checkpoint"
            )
    return tensors


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise AdapterFileError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise AdapterFileError(f"{path}: unreadable ({err})") from None


def _read_safetensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise AdapterFileError(f"{path}: not a readable safetensors file, truncated or corrupt ({err})") from None
