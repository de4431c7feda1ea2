"""Save an adapter in PEFT's layout (plus ``lorakit.json``), atomically."""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes
from torch import nn

from lorakit._version import __version__
from lorakit.core.bases import fingerprint
from lorakit.core.errors import AdapterStateError
from lorakit.core.files import atomic
from lorakit.core.files.layout import plain_biases
from lorakit.core.files.peft_format import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    bias_key,
    config_to_peft,
    file_key,
    saved_module_key,
)
from lorakit.core.files.read import META_FILE
from lorakit.core.layers import LoraEmbedding, ModulesToSave
from lorakit.core.layers.variants.save_form import export_config, export_tensors
from lorakit.core.model import adapter_state, lora_layers


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
        for mname, bias in plain_biases(model, set(targets), config):
            tensors[bias_key(mname, wrapped=False)] = bias
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}


def save_adapter(
    model: nn.Module,
    directory: str | Path,
    name: str = "default",
    *,
    metadata: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write adapter ``name`` to ``directory`` in PEFT's layout, atomically; returns the directory.

    ``metadata`` is merged into ``lorakit.json`` (training adds dataset, metrics and config there). The directory
    is staged and renamed into place, so it ends holding exactly the adapter's three files: it must be absent or
    empty unless ``overwrite``, which replaces everything it holds.

    Raises:
        AdapterStateError: the model has no adapter ``name``.
        OutputExistsError: ``directory`` is a file or a non-empty directory and ``overwrite`` is false.
    """
    state = adapter_state(model)
    if name not in state.configs:
        raise AdapterStateError(f"no adapter named {name!r}; the model has {list(state.configs) or 'none'}")
    atomic.check_output(directory, overwrite=overwrite, what="adapter directory")
    config = export_config(state.configs[name], model, name)
    layers = [(m, layer) for m, layer in lora_layers(model) if name in layer.lora_A]
    leaf_names = [m.rsplit(".", 1)[-1] for m, _ in layers]
    fan_in_fan_out = any(getattr(layer, "fan_in_fan_out", False) for _, layer in layers)
    peft_config = config_to_peft(config, leaf_names, fan_in_fan_out)
    model_config = getattr(model, "config", None)
    peft_config["base_model_name_or_path"] = (
        config.base_model_name_or_path or getattr(model_config, "name_or_path", None) or None
    )
    peft_config["task_type"] = config.task_type or _task_type(
        model
    )  # SEQ_CLS/TOKEN_CLS only when the config says: they make PEFT save heads
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


def write_adapter(
    directory: str | Path, peft_config: dict[str, Any], tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> Path:
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
    return None
