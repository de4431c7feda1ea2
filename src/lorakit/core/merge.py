"""Fold adapters into the base weights and take lorakit's modules out again.

Merging is explicit: ``W ← W + scale·B·A`` computed in fp32 and cast back to W's dtype, optionally
checked for NaN/inf before anything is written. Nothing here runs as a side effect of training.

Tied weights, one rule for :func:`merge`, :func:`unmerge`, :func:`merge_and_unload` and the merged export:
when a layer to be merged shares its weight with another module (``lm_head`` tied to ``embed_tokens``, or one
module under two paths), the unmerged model changes only the adapted side. So before merging, that layer gets
its own copy of the shared module and the model's ``tie_word_embeddings`` becomes ``False`` (so a saved merged
model reloads untied); :func:`unmerge` puts the shared module back and restores the flag. A trained copy of a
saved module (``modules_to_save``) is separate already; unloading it also clears the flag.
"""

from __future__ import annotations

import copy
from collections import Counter

from torch import nn

from lorakit.core.errors import AdapterStateError, MergeError
from lorakit.core.layers import LoraLayer, ModulesToSave
from lorakit.core.model import active_adapters, adapter_state, lora_layers
from lorakit.core.modules import output_head


def _resolve(model: nn.Module, names: str | list[str] | None) -> list[str]:
    if names is None:
        names = list(active_adapters(model))
    elif isinstance(names, str):
        names = [names]
    known = adapter_state(model).configs
    unknown = [n for n in names if n not in known]
    if unknown:
        raise AdapterStateError(
            f"no adapter named {', '.join(map(repr, unknown))}; the model has {list(known) or 'none'}"
        )
    if not names:
        raise AdapterStateError("no adapter to merge: none is active and none was named")
    return names


def _in_forward_order(model: nn.Module, names: list[str]) -> list[str]:
    """``names`` with the active ones first, in the order forward applies them (DoRA rescales what comes
    before it, so the order of merging must be that order for merged to equal unmerged)."""
    active = active_adapters(model)
    return [n for n in active if n in names] + [n for n in names if n not in active]


def merge(
    model: nn.Module, names: str | list[str] | None = None, *, safe: bool = True, requantize: bool = False
) -> nn.Module:
    """Fold adapters ``names`` (default: the active ones) into the base weights.

    Merging an adapter that is already merged raises; with ``safe`` a merge that would produce NaN/inf
    raises before any weight of that layer is written. A quantised (NF4/int8) base is dequantised and merged
    in fp32; the merged layer stays in float unless ``requantize`` (see ``lorakit.core.merge_quantized`` for the
    rounding cost).
    """
    names = _in_forward_order(model, _resolve(model, names))
    layers = [layer for _, layer in lora_layers(model)]
    already = sorted({n for layer in layers for n in layer.merged if n in names})
    if already:
        raise AdapterStateError(f"adapter(s) {already} already merged; call lk.unmerge(model) before merging again")
    for layer in layers:  # refused before any weight is written
        refusal = layer.merge_refusal() if any(n in layer.lora_A for n in names) else None
        if refusal:
            raise MergeError(
                f"layer {layer.path}: {refusal}; nothing was merged. Keep the adapters unmerged, or exclude "
                "that layer when training"
            )
    _untie(model, [layer for layer in layers if any(n in layer.lora_A and n not in layer.merged for n in names)])
    for layer in layers:
        for name in names:
            layer.merge(name, safe=safe, requantize=requantize)
    return model


def shared_modules(model: nn.Module, modules: list[nn.Module]) -> list[nn.Module]:
    """Those of ``modules`` whose weight another module also holds (tied), or that sit under two paths."""
    owners = Counter(id(p) for m in model.modules() for p in m._parameters.values() if p is not None)
    paths = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    shared = []
    for module in modules:
        weight = getattr(module, "weight", None)
        if paths[id(module)] > 1 or (isinstance(weight, nn.Parameter) and owners[id(weight)] > 1):
            shared.append(module)
    return shared


def _untie(model: nn.Module, layers: list[LoraLayer]) -> None:
    """Give each of ``layers`` whose base is shared its own copy of it (see the module docstring)."""
    shared = set(map(id, shared_modules(model, [layer.base_layer for layer in layers])))
    state = adapter_state(model)
    for layer in layers:
        if id(layer.base_layer) in shared:
            state.untied.append((layer, layer.base_layer))
            layer.base_layer = _own_copy(layer.base_layer)
    if shared:
        _clear_tie_flag(model, state)


def _own_copy(module: nn.Module) -> nn.Module:
    """``module`` as a new module object with its own copy of ``weight`` (other tensors and hooks shared)."""
    twin = copy.copy(module)
    twin._parameters = type(module._parameters)(module._parameters)
    twin._buffers = type(module._buffers)(module._buffers)
    twin._modules = type(module._modules)(module._modules)
    twin.weight = nn.Parameter(module.weight.detach().clone(), requires_grad=module.weight.requires_grad)
    return twin


def _clear_tie_flag(model: nn.Module, state) -> None:
    config = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else None
    for cfg in {id(c): c for c in (config, text) if c is not None}.values():
        if getattr(cfg, "tie_word_embeddings", False):
            state.tie_flags.append((cfg, True))
            cfg.tie_word_embeddings = False


def unmerge(model: nn.Module) -> nn.Module:
    """Take every merged adapter out of the base weights again (W₀ restored in fp32; a quantised base gets its
    quantised layer back as it was; weights a merge untied are tied again). Raises when nothing is merged."""
    layers = [layer for _, layer in lora_layers(model)]
    if not any(layer.merged for layer in layers):
        raise AdapterStateError("nothing is merged: unmerge has nothing to undo")
    for layer in layers:
        layer.unmerge()
    state = adapter_state(model)
    for layer, shared in reversed(state.untied):
        layer.base_layer = shared
    for cfg, flag in reversed(state.tie_flags):
        cfg.tie_word_embeddings = flag
    state.untied.clear()
    state.tie_flags.clear()
    return model


def merged_adapters(model: nn.Module) -> list[str]:
    """Names of the adapters folded into the base weights (by :func:`merge`), in the order they were merged.

    Empty when nothing is merged; :func:`unload`, :func:`lorakit.disabled` and per-row adapters need it empty.
    """
    names: list[str] = []
    for _, layer in lora_layers(model):
        names += [n for n in layer.merged if n not in names]
    return names


def merge_and_unload(model: nn.Module, names: str | list[str] | None = None, *, safe: bool = True) -> nn.Module:
    """Merge ``names`` and return the plain model: LoRA wrappers replaced by their (merged) base layers,
    saved modules by the trained copy of the first merged adapter that has one."""
    names = _resolve(model, names)
    _refuse_split_ties(model, names)
    if not merged_adapters(model):
        merge(model, names, safe=safe)
    model.__dict__.pop("lorakit_fingerprint", None)  # the merged weights are a new base
    return _replace_wrappers(model, keep_trained=names)


def _refuse_split_ties(model: nn.Module, names: list[str]) -> None:
    """Refuse, before anything is merged, a merge whose saved model would reload as another model.

    T5-style models hold one embedding matrix in several modules (``shared``, ``encoder.embed_tokens``,
    ``decoder.embed_tokens``). Merging gives each adapted holder its own copy; if two or more holders (other than
    the output head, whose tie the config flag controls) are left sharing the old matrix, saving writes it once
    and transformers ties it back to the adapted one on load. Target every holder, or keep the adapter unmerged.
    """
    adapted = {
        id(layer.base_layer): path for path, layer in lora_layers(model) if any(n in layer.lora_A for n in names)
    }
    holders: dict[int, list[tuple[str, nn.Module]]] = {}
    for path, module in model.named_modules():
        weight = module._parameters.get("weight")
        if weight is not None:
            holders.setdefault(id(weight), []).append((path, module))
    head = output_head(model)
    for group in holders.values():
        touched = [adapted[id(m)] for _, m in group if id(m) in adapted]
        left = [
            path for path, m in group if id(m) not in adapted and m is not head and not path.endswith(".base_layer")
        ]
        if touched and len(left) >= 2:
            raise MergeError(
                f"layer {touched[0]}: its weight is shared with {', '.join(left)}; merged, a saved model would "
                f"reload with {touched[0]} tied back to them (wrong weights). Target every module sharing it "
                f"or keep the adapter unmerged"
            )


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
            if chosen and shared_modules(model, [module.original_module]):
                _clear_tie_flag(model, state)  # the trained copy replaces one side of a tie
        else:
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, replacement)
    for pname, p in model.named_parameters():
        p.requires_grad_(state.original_requires_grad.get(pname, True))
    model.__dict__.pop("_lorakit", None)
    return model
