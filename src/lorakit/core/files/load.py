"""Load an adapter directory into a model, validating everything before the model is touched."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from lorakit.core.bases import fingerprint
from lorakit.core.config import LoraConfig
from lorakit.core.errors import AdapterStateError, BaseMismatchError
from lorakit.core.files.layout import check_fits, expected_shapes
from lorakit.core.files.peft_format import PREFIX, bias_key, file_key, saved_module_key
from lorakit.core.files.read import AdapterFiles, read_adapter
from lorakit.core.layers import LoraEmbedding, ModulesToSave
from lorakit.core.model import adapter_parameters, adapter_state, inject, lora_layers
from lorakit.core.modules import unwrap
from lorakit.core.transaction import all_or_nothing


def load_adapter(
    model: nn.Module,
    source: str | Path,
    name: str = "default",
    *,
    allow_base_mismatch: bool = False,
    trainable: bool = False,
) -> nn.Module:
    """Load an adapter directory into ``model`` as adapter ``name`` (injecting it); returns ``model``.

    Everything is validated first — files, config, base fingerprint, keys and shapes — and on any error the
    model is left exactly as it was. ``trainable`` keeps the adapter's parameters trainable. An adapter that
    carries full embedding / output-head matrices (PEFT saves them for a resized vocabulary) writes them into
    the base, as PEFT does; the model must have been resized to their shape.
    """
    if name in adapter_state(model).configs:
        raise AdapterStateError(
            f"adapter {name!r} already exists; delete_adapter(model, {name!r}) first or choose another name"
        )
    files = read_adapter(source)
    check_base(model, files, allow_base_mismatch)
    shapes = expected_shapes(model, files.config)
    tensors = check_fits(model, files, shapes, full_layers_ok=True)
    full = {key: t for key, t in tensors.items() if key not in shapes}
    written = (
        [p for pname, p in model.named_parameters() if pname.endswith("bias")] if files.config.bias != "none" else []
    )
    written += [_full_layer(model, key).weight for key in full]
    with all_or_nothing(model, keep=written):  # on any error the model is exactly as before
        inject(model, files.config, name)
        _copy_in(model, files.config, name, tensors)
        _copy_full_layers(model, full)
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
        message = (
            f"{files.path}: adapter was trained on base {base_name!r} (fingerprint {theirs[:12]}), "
            f"this model has fingerprint {ours[:12]}; load the right base or pass allow_base_mismatch=True"
        )
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
                    module_name = key[len(PREFIX) : -len(".bias")]
                    if not isinstance(model.get_submodule(module_name), ModulesToSave):
                        model.get_submodule(module_name).bias.copy_(tensor)


def _copy_full_layers(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Write the full matrices :func:`lorakit.core.files.layout.full_layers` found into the base parameters."""
    with torch.no_grad():
        for key, tensor in tensors.items():
            _full_layer(model, key).weight.copy_(tensor)


def _full_layer(model: nn.Module, key: str) -> nn.Module:
    return unwrap(model.get_submodule(key[len(PREFIX) : -len(".weight")].removesuffix(".base_layer")))
