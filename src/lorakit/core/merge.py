"""Fold adapters into the base weights and take lorakit's modules out again.

Merging is explicit: ``W ← W + scale·B·A`` computed in fp32 and cast back to W's dtype, optionally
checked for NaN/inf before anything is written. Nothing here runs as a side effect of training.
"""

from __future__ import annotations

from torch import nn

from lorakit.core.errors import AdapterStateError
from lorakit.core.layers import LoraLayer, ModulesToSave
from lorakit.core.model import active_adapters, adapter_state, lora_layers


def _resolve(model: nn.Module, names: str | list[str] | None) -> list[str]:
    if names is None:
        names = list(active_adapters(model))
    elif isinstance(names, str):
        names = [names]
    known = adapter_state(model).configs
    unknown = [n for n in names if n not in known]
    if unknown:
        raise AdapterStateError(f"no adapter named {', '.join(map(repr, unknown))}; the model has {list(known) or 'none'}")
    if not names:
        raise AdapterStateError("no adapter to merge: none is active and none was named")
    return names


def merge(model: nn.Module, names: str | list[str] | None = None, *, safe: bool = True,
          requantize: bool = False) -> nn.Module:
    """Fold adapters ``names`` (default: the active ones) into the base weights.

    Merging an adapter that is already merged raises; with ``safe`` a merge that would produce NaN/inf
    raises before any weight of that layer is written. A quantised (NF4/int8) base is dequantised and merged
    in fp32; the merged layer stays in float unless ``requantize`` (see ``lorakit.core.merge_quantized`` for the
    rounding cost).
    """
    names = _resolve(model, names)
    layers = [layer for _, layer in lora_layers(model)]
    already = sorted({n for layer in layers for n in layer.merged if n in names})
    if already:
        raise AdapterStateError(f"adapter(s) {already} already merged; call lk.unmerge(model) before merging again")
    for layer in layers:
        for name in names:
            layer.merge(name, safe=safe, requantize=requantize)
    return model


def unmerge(model: nn.Module) -> nn.Module:
    """Subtract every merged adapter from the base weights. Raises when nothing is merged."""
    layers = [layer for _, layer in lora_layers(model)]
    if not any(layer.merged for layer in layers):
        raise AdapterStateError("nothing is merged: unmerge has nothing to undo")
    for layer in layers:
        layer.unmerge()
    return model


def merged_adapters(model: nn.Module) -> list[str]:
    names: list[str] = []
    for _, layer in lora_layers(model):
        names += [n for n in layer.merged if n not in names]
    return names


def merge_and_unload(model: nn.Module, names: str | list[str] | None = None, *, safe: bool = True) -> nn.Module:
    """Merge ``names`` and return the plain model: LoRA wrappers replaced by their (merged) base layers,
    saved modules by the trained copy of the first merged adapter that has one."""
    names = _resolve(model, names)
    if not merged_adapters(model):
        merge(model, names, safe=safe)
    model.__dict__.pop("lorakit_fingerprint", None)  # the merged weights are a new base
    return _replace_wrappers(model, keep_trained=names)


def unload(model: nn.Module) -> nn.Module:
    """Remove every adapter without merging: the original module tree, weights and trainability come back."""
    if merged_adapters(model):
        raise AdapterStateError("adapters are merged into the weights; unmerge first or use merge_and_unload")
    return _replace_wrappers(model, keep_trained=[])


def _replace_wrappers(model: nn.Module, keep_trained: list[str]) -> nn.Module:
    state = adapter_state(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            replacement = module.base_layer
        elif isinstance(module, ModulesToSave):
            chosen = next((n for n in keep_trained if n in module.modules_to_save), None)
            replacement = module.modules_to_save[chosen] if chosen else module.original_module
        else:
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, replacement)
    for pname, p in model.named_parameters():
        p.requires_grad_(state.original_requires_grad.get(pname, True))
    model.__dict__.pop("_lorakit", None)
    return model
