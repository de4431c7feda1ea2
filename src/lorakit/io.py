"""Save and load adapters in PEFT's layout, validating everything before the model is touched.

An adapter directory holds ``adapter_config.json`` (PEFT's fields), ``adapter_model.safetensors`` (PEFT's
key names) and ``lorakit.json`` (base fingerprint, version, creation time, provenance). Pickle files are
never read.
"""

from __future__ import annotations

import datetime as _dt
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes
from torch import nn

from lorakit import __version__, atomic
from lorakit.bases import fingerprint
from lorakit.config import LoraConfig
from lorakit.errors import AdapterFileError, AdapterMismatchError, AdapterStateError, BaseMismatchError
from lorakit.layers import LoraEmbedding, LoraLayer, ModulesToSave
from lorakit.model import adapter_parameters, adapter_state, delete_adapter, inject, lora_layers
from lorakit.plain import export_config, export_tensors
from lorakit.peft_format import (CONFIG_FILE, PREFIX, WEIGHTS_FILE, bias_key, config_from_peft, config_to_peft,
                                 file_key, saved_module_key)
from lorakit.targeting import find_saved_modules, find_targets, is_linear, unwrap

META_FILE = "lorakit.json"
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
    text = str(source)
    scheme, sep, ref = text.partition(":")
    if sep and scheme in _resolvers:
        return Path(_resolvers[scheme](ref))
    if sep and scheme == "registry":
        raise AdapterFileError(f"{text}: no registry is available to resolve it; import lorakit.registry or pass a directory")
    return Path(source)


def read_adapter(source: str | Path) -> AdapterFiles:
    """Read and check an adapter directory (or ``registry:name@version``) without touching any model."""
    path = resolve_source(source)
    if not path.is_dir():
        raise AdapterFileError(f"{path}: adapter directory not found")
    config_path, weights_path = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not config_path.exists():
        raise AdapterFileError(f"{path}: no {CONFIG_FILE}; an adapter directory holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    if not weights_path.exists():
        pickled = [p.name for p in path.glob("*.bin")]
        hint = f" ({pickled[0]} is a pickle file, which lorakit never reads: convert it to safetensors)" if pickled else ""
        raise AdapterFileError(f"{path}: no {WEIGHTS_FILE}{hint}")
    raw = _read_json(config_path)
    config = config_from_peft(raw, str(config_path))
    tensors = _read_safetensors(weights_path)
    meta = _read_json(path / META_FILE) if (path / META_FILE).exists() else {}
    return AdapterFiles(path, config, tensors, meta if isinstance(meta, dict) else {}, raw)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise AdapterFileError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise AdapterFileError(f"{path}: unreadable ({err})") from None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise AdapterFileError(f"{path}: not a readable safetensors file, truncated or corrupt ({err})") from None


# --- expected layout ----------------------------------------------------------------------------------

def expected_shapes(model: nn.Module, config: LoraConfig) -> dict[str, tuple[int, ...]]:
    """PEFT key -> shape of every tensor an adapter with ``config`` must have on ``model``."""
    shapes: dict[str, tuple[int, ...]] = {}
    for name in find_targets(model, config):
        base = unwrap(model.get_submodule(name))
        r = config.rank_for(name)
        if is_linear(base):
            from lorakit.layers import linear_shape

            fan_in, fan_out, _ = linear_shape(base)
            shapes[file_key(name, "lora_A", "linear")] = (r, fan_in)
            shapes[file_key(name, "lora_B", "linear")] = (fan_out, r)
            if config.use_dora:
                shapes[file_key(name, "lora_magnitude", "linear")] = (fan_out,)
        else:
            shapes[file_key(name, "lora_A", "embedding")] = (r, base.num_embeddings)
            shapes[file_key(name, "lora_B", "embedding")] = (base.embedding_dim, r)
        if config.bias != "none" and getattr(base, "bias", None) is not None:
            shapes[bias_key(name, wrapped=True)] = tuple(base.bias.shape)
    for name in find_saved_modules(model, config):
        for pname, p in unwrap(model.get_submodule(name)).named_parameters():
            shapes[saved_module_key(name, pname)] = tuple(p.shape)
    if config.bias == "all":
        targets = set(find_targets(model, config))
        for pname, p in _plain_biases(model, targets, config):
            shapes[bias_key(pname, wrapped=False)] = tuple(p.shape)
    return shapes


def _plain_biases(model: nn.Module, targets: set[str], config: LoraConfig):
    saved = set(find_saved_modules(model, config))
    for mname, module in model.named_modules():
        if mname in targets or mname in saved or isinstance(module, (LoraLayer, ModulesToSave)):
            continue
        if any(part in f".{mname}." for part in (".base_layer.", ".original_module.", ".modules_to_save.", ".lora_")):
            continue
        bias = module._parameters.get("bias")
        if isinstance(bias, torch.Tensor):
            yield mname, bias


def _normalise_key(key: str) -> str:
    """PEFT sometimes writes a saved module's copy under ``modules_to_save`` and its original too."""
    return key.replace(".modules_to_save.", ".")


def _is_ignorable(key: str) -> bool:
    return ".original_module." in key or key.endswith(".base_layer.weight")


def check_fits(model: nn.Module, files: AdapterFiles,
               shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, torch.Tensor]:
    """Compare an adapter's tensors with what ``model`` expects (``shapes``: :func:`expected_shapes` when the
    caller already has it); return them by normalised key or raise."""
    shapes = expected_shapes(model, files.config) if shapes is None else shapes
    tensors = {_normalise_key(k): v for k, v in files.tensors.items() if not _is_ignorable(k)}
    missing = sorted(set(shapes) - set(tensors))
    unexpected = sorted(set(tensors) - set(shapes))
    where = files.path / WEIGHTS_FILE
    if missing:
        raise AdapterMismatchError(f"{where}: {len(missing)} tensor(s) missing, first {_short(missing[0])}; the file does not match its config")
    if unexpected:
        raise AdapterMismatchError(f"{where}: {len(unexpected)} unexpected tensor(s), first {_short(unexpected[0])}; "
                                   "the adapter was made for a model with other module names")
    for key, shape in shapes.items():
        if tuple(tensors[key].shape) != shape:
            raise AdapterMismatchError(
                f"{where}: layer {_short(key)} expects shape {shape}, file has {tuple(tensors[key].shape)}"
                f"{_fingerprint_hint(model, files)}")
    return tensors


def _short(key: str) -> str:
    return key[len(PREFIX):] if key.startswith(PREFIX) else key


def _fingerprint_hint(model: nn.Module, files: AdapterFiles) -> str:
    theirs = files.base_fingerprint
    if theirs is None:
        return ": this adapter was trained for another base"
    return f": this adapter was trained for another base (fingerprint {theirs[:12]} vs {fingerprint(model)[:12]})"


# --- load ---------------------------------------------------------------------------------------------

def load_adapter(model: nn.Module, source: str | Path, name: str = "default", *, allow_base_mismatch: bool = False,
                 trainable: bool = False) -> nn.Module:
    """Load an adapter directory into ``model`` as adapter ``name`` (injecting it); returns ``model``.

    Everything is validated first — files, config, base fingerprint, keys and shapes — and on any error the
    model is left exactly as it was. ``trainable`` keeps the adapter's parameters trainable.
    """
    if name in adapter_state(model).configs:
        raise AdapterStateError(f"adapter {name!r} already exists; delete_adapter(model, {name!r}) first or choose another name")
    files = read_adapter(source)
    check_base(model, files, allow_base_mismatch)
    tensors = check_fits(model, files)
    inject(model, files.config, name)
    try:
        _copy_in(model, files.config, name, tensors)
    except BaseException:
        delete_adapter(model, name)
        raise
    if not trainable:
        for p in adapter_parameters(model, name).values():
            p.requires_grad_(False)
    return model


def restore_adapter(model: nn.Module, source: str | Path, name: str = "default") -> nn.Module:
    """Overwrite the tensors of ``model``'s existing adapter ``name`` with those of an adapter directory.

    The files are validated first (base fingerprint, keys, shapes); the adapter's trainability is unchanged.
    """
    state = adapter_state(model)
    if name not in state.configs:
        raise AdapterStateError(f"no adapter named {name!r}; the model has {list(state.configs) or 'none'}")
    files = read_adapter(source)
    check_base(model, files)
    _copy_in(model, state.configs[name], name, check_fits(model, files))
    return model


def check_base(model: nn.Module, files: AdapterFiles, allow_base_mismatch: bool = False) -> None:
    theirs = files.base_fingerprint
    if theirs is None:
        return
    ours = fingerprint(model)
    if theirs != ours:
        base_name = files.meta.get("base", {}).get("name_or_path", "?")
        message = (f"{files.path}: adapter was trained on base {base_name!r} (fingerprint {theirs[:12]}), "
                   f"this model has fingerprint {ours[:12]}; load the right base or pass allow_base_mismatch=True")
        if not allow_base_mismatch:
            raise BaseMismatchError(message)
        warnings.warn(message, stacklevel=3)


def _copy_in(model: nn.Module, config: LoraConfig, name: str, tensors: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for mname, layer in lora_layers(model):
            if name not in layer.lora_A:
                continue
            kind = "embedding" if isinstance(layer, LoraEmbedding) else "linear"
            for attr in layer.adapter_param_names:
                if name in getattr(layer, attr):
                    getattr(layer, attr)[name].copy_(tensors[file_key(mname, attr, kind)])
            if config.bias != "none" and getattr(layer.base_layer, "bias", None) is not None:
                layer.base_layer.bias.copy_(tensors[bias_key(mname, wrapped=True)])
        for mname, module in model.named_modules():
            if isinstance(module, ModulesToSave) and name in module.modules_to_save:
                for pname, p in module.modules_to_save[name].named_parameters():
                    p.copy_(tensors[saved_module_key(mname, pname)])
        if config.bias == "all":
            for key, tensor in tensors.items():
                if key.endswith(".bias") and ".base_layer." not in key:
                    module_name = key[len(PREFIX):-len(".bias")]
                    if not isinstance(model.get_submodule(module_name), ModulesToSave):
                        model.get_submodule(module_name).bias.copy_(tensor)


# --- save ---------------------------------------------------------------------------------------------

def adapter_tensors(model: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """Adapter ``name``'s tensors by PEFT key, as they would be saved."""
    config = adapter_state(model).configs[name]
    tensors: dict[str, torch.Tensor] = {}
    targets = []
    for mname, layer in lora_layers(model):
        if name not in layer.lora_A:
            continue
        targets.append(mname)
        kind = "embedding" if isinstance(layer, LoraEmbedding) else "linear"
        for attr, tensor in export_tensors(layer, name).items():
            tensors[file_key(mname, attr, kind)] = tensor
        if config.bias != "none" and getattr(layer.base_layer, "bias", None) is not None:
            tensors[bias_key(mname, wrapped=True)] = layer.base_layer.bias
    for mname, module in model.named_modules():
        if isinstance(module, ModulesToSave) and name in module.modules_to_save:
            for pname, p in module.modules_to_save[name].named_parameters():
                tensors[saved_module_key(mname, pname)] = p
    if config.bias == "all":
        for mname, bias in _plain_biases(model, set(targets), config):
            tensors[bias_key(mname, wrapped=False)] = bias
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}


def save_adapter(model: nn.Module, directory: str | Path, name: str = "default", *,
                 metadata: dict[str, Any] | None = None) -> Path:
    """Write adapter ``name`` to ``directory`` in PEFT's layout, atomically; returns the directory.

    ``metadata`` is merged into ``lorakit.json`` (training adds dataset, metrics and config there).
    """
    state = adapter_state(model)
    if name not in state.configs:
        raise AdapterStateError(f"no adapter named {name!r}; the model has {list(state.configs) or 'none'}")
    config = export_config(state.configs[name], model, name)
    layers = [(m, layer) for m, layer in lora_layers(model) if name in layer.lora_A]
    leaf_names = [m.rsplit(".", 1)[-1] for m, _ in layers]
    fan_in_fan_out = any(getattr(layer, "fan_in_fan_out", False) for _, layer in layers)
    peft_config = config_to_peft(config, leaf_names, fan_in_fan_out)
    model_config = getattr(model, "config", None)
    peft_config["base_model_name_or_path"] = config.base_model_name_or_path or getattr(model_config, "name_or_path", None) or None
    peft_config["task_type"] = config.task_type or _task_type(model)
    meta = base_metadata(model)
    meta["adapter_name"] = name
    meta.update(metadata or {})
    return write_adapter(directory, peft_config, adapter_tensors(model, name), meta)


def base_metadata(model: nn.Module) -> dict[str, Any]:
    model_config = getattr(model, "config", None)
    architectures = getattr(model_config, "architectures", None) or [type(model).__name__]
    return {
        "lorakit_version": __version__,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "base": {
            "name_or_path": getattr(model_config, "name_or_path", None),
            "fingerprint": fingerprint(model),
            "architecture": architectures[0],
        },
    }


def write_adapter(directory: str | Path, peft_config: dict[str, Any], tensors: dict[str, torch.Tensor],
                  meta: dict[str, Any]) -> Path:
    """Write the three files of an adapter directory atomically (staging directory, then rename)."""
    directory = Path(directory)
    payload = safetensors_bytes({k: v.contiguous() for k, v in tensors.items()}, metadata={"format": "pt"})
    with atomic.directory(directory) as staging:
        (staging / CONFIG_FILE).write_text(json.dumps(peft_config, indent=2, sort_keys=True) + "\n")
        (staging / WEIGHTS_FILE).write_bytes(payload)
        (staging / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    return directory


def _task_type(model: nn.Module) -> str | None:
    cls = type(model).__name__
    if cls.endswith("ForCausalLM") or cls.endswith("LMHeadModel"):
        return "CAUSAL_LM"
    if cls.endswith("ForSequenceClassification"):
        return "SEQ_CLS"
    if cls.endswith("ForTokenClassification"):
        return "TOKEN_CLS"
    return None
