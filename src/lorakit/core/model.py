"""Adapters on a model: inject, activate, disable, delete, route rows, and count what trains."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from lorakit.core.adapter_names import check_adapter_name
from lorakit.core.bases import fingerprint
from lorakit.core.config import LoraConfig
from lorakit.core.errors import AdapterStateError, ConfigError
from lorakit.core.layers import LAYER_TYPES, LoraEmbedding, LoraLayer, ModulesToSave, RowRouting
from lorakit.core.layers.variants.dora import init_magnitude
from lorakit.core.modules import unwrap
from lorakit.core.targeting import find_saved_modules, find_targets, layer_kind
from lorakit.core.transaction import all_or_nothing


@dataclass
class AdapterState:
    """What lorakit keeps on a model: configs by adapter name, the active names, and the base's trainability."""

    configs: dict[str, LoraConfig] = field(default_factory=dict)
    active: tuple[str, ...] = ()
    original_requires_grad: dict[str, bool] = field(default_factory=dict)
    untied: list[tuple[LoraLayer, nn.Module]] = field(default_factory=list)
    """Layers a merge gave their own copy of a shared (tied) base, with the shared module to put back."""
    tie_flags: list[tuple[object, bool]] = field(default_factory=list)
    """``(config, tie_word_embeddings)`` as they were before a merge untied weights."""


def adapter_state(model: nn.Module) -> AdapterState:
    """The model's :class:`AdapterState` (empty when nothing was injected)."""
    return model.__dict__.get("_lorakit", AdapterState())


def adapter_names(model: nn.Module) -> list[str]:
    return list(adapter_state(model).configs)


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoraLayer]]:
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            yield name, module


def _adapter_modules(model: nn.Module) -> Iterator[LoraLayer | ModulesToSave]:
    for module in model.modules():
        if isinstance(module, (LoraLayer, ModulesToSave)):
            yield module


def inject(
    model: nn.Module, config: LoraConfig, name: str = "default", *, dtype: torch.dtype | None = None
) -> nn.Module:
    """Add adapter ``name`` to every module ``config`` targets, in place; returns ``model``.

    The base is frozen; the new adapter's parameters (and the biases or saved modules ``config`` names)
    train. The first adapter injected becomes active; later ones wait for :func:`set_active`.
    ``dtype`` sets the adapter parameters' dtype (default: the base weight's float dtype). Each new wrapper
    takes the train/eval mode of the module it wraps (so dropout runs only if that module was training).

    All or nothing: the name (:func:`~lorakit.core.adapter_names.check_adapter_name`) and the targets are
    checked before the model is touched, and an error while adapting puts the model back exactly as it was.

    Raises:
        ConfigError: a name that would collide with module attributes or key names; an invalid target.
        AdapterStateError: the model already has an adapter ``name``.
    """
    state = adapter_state(model)
    if name in state.configs:
        raise AdapterStateError(
            f"adapter {name!r} already exists; delete_adapter(model, {name!r}) first or choose another name"
        )
    check_adapter_name(name, model)
    targets = find_targets(model, config)
    saved = find_saved_modules(model, config)
    kinds = {t: LAYER_TYPES[layer_kind(model.get_submodule(t))] for t in targets}
    if config.use_dora and LoraEmbedding in kinds.values():
        first = next(t for t, k in kinds.items() if k is LoraEmbedding)
        raise ConfigError(
            f"use_dora applies to linear layers; target {first!r} is an embedding: exclude it or turn DoRA off"
        )
    rewrites_base = config.init not in ("default", "gaussian")  # PiSSA/OLoRA leave the residual in W₀
    keep = [unwrap(model.get_submodule(t)).weight for t in targets] if rewrites_base else []
    with all_or_nothing(model, keep):
        if rewrites_base:
            model.__dict__["lorakit_fingerprint"] = fingerprint(model)  # keep the original base's
        if not state.configs:
            state.original_requires_grad = {
                n: p.requires_grad for n, p in model.named_parameters(remove_duplicate=False)
            }
            for p in model.parameters():
                p.requires_grad_(False)
        for target in targets:
            layer = _wrap(model, target, kinds[target])
            layer.add_adapter(name, config.rank_for(target), config.scale_for(target), config.dropout, config.init)
            if config.use_dora:
                init_magnitude(layer, name)
            if dtype is not None:
                for attr in layer.adapter_param_names:
                    store = getattr(layer, attr)
                    if name in store:
                        store[name].data = store[name].data.to(dtype)
        for target in saved:
            _wrap(model, target, ModulesToSave).add_adapter(name)
        _train_biases(model, config)
        state.configs[name] = config
        model.__dict__["_lorakit"] = state
        set_active(model, state.active or (name,))
    return model


def _wrap(model: nn.Module, target: str, kind: type) -> nn.Module:
    module = model.get_submodule(target)
    if isinstance(module, kind):
        return module
    parent_name, _, child = target.rpartition(".")
    wrapper = kind(module)
    wrapper.path = target
    for part in wrapper.modules():  # the wrapper and its own containers follow the wrapped module's mode
        if part is not module and not any(part is inner for inner in module.modules()):
            part.training = module.training
    setattr(model.get_submodule(parent_name) if parent_name else model, child, wrapper)
    return wrapper


def _train_biases(model: nn.Module, config: LoraConfig) -> None:
    if config.bias == "all":
        for pname, p in model.named_parameters():
            if pname.endswith("bias") and ".lora_" not in pname and ".original_module." not in pname:
                p.requires_grad_(True)
    elif config.bias == "lora_only":
        for _, layer in lora_layers(model):
            bias = getattr(layer.base_layer, "bias", None)
            if bias is not None:
                bias.requires_grad_(True)


def set_active(model: nn.Module, names: str | list[str] | tuple[str, ...]) -> None:
    """Activate one adapter or several (their deltas add). Unknown names are an error."""
    names = (names,) if isinstance(names, str) else tuple(names)
    state = adapter_state(model)
    unknown = [n for n in names if n not in state.configs]
    if unknown:
        raise AdapterStateError(
            f"no adapter named {', '.join(map(repr, unknown))}; the model has {adapter_names(model) or 'none'}"
        )
    state.active = names
    for module in _adapter_modules(model):
        module.set_active(names)


def active_adapters(model: nn.Module) -> tuple[str, ...]:
    return adapter_state(model).active


@contextlib.contextmanager
def disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block every adapter is bypassed and the model computes the base outputs exactly.

    Merged adapters are part of the weights and cannot be bypassed: unmerge first.
    """
    modules = list(_adapter_modules(model))
    if any(isinstance(m, LoraLayer) and m.merged for m in modules):
        raise AdapterStateError("cannot disable merged adapters; call lk.unmerge(model) first")
    previous = [m.disabled for m in modules]
    for m in modules:
        m.disabled = True
    try:
        yield model
    finally:
        for m, was in zip(modules, previous):
            m.disabled = was


@contextlib.contextmanager
def row_adapters(model: nn.Module, names: list[str | None]) -> Iterator[nn.Module]:
    """Inside the block row ``i`` of every batch uses adapter ``names[i]`` (``None``: the base)."""
    known = adapter_state(model).configs
    unknown = sorted({n for n in names if n is not None and n not in known})
    if unknown:
        raise AdapterStateError(
            f"no adapter named {', '.join(map(repr, unknown))}; the model has {list(known) or 'none'}"
        )
    layers = [layer for _, layer in lora_layers(model)]
    device = next(model.parameters()).device
    routing = RowRouting(names, device)
    for layer in layers:
        layer.routing = routing
    try:
        yield model
    finally:
        for layer in layers:
            layer.routing = None


def delete_adapter(model: nn.Module, name: str) -> None:
    """Remove adapter ``name`` from every layer. All or nothing: a merged adapter is refused (unmerge first)
    before any layer is changed.

    Raises:
        AdapterStateError: no adapter ``name``, or it is merged into some layer.
    """
    state = adapter_state(model)
    if name not in state.configs:
        raise AdapterStateError(f"no adapter named {name!r}; the model has {adapter_names(model) or 'none'}")
    merged_in = [path for path, layer in lora_layers(model) if name in layer.merged]
    if merged_in:
        raise AdapterStateError(
            f"adapter {name!r} is merged into {merged_in[0]} (and {len(merged_in) - 1} more layers); "
            "call lk.unmerge(model) before deleting it"
        )
    for module in _adapter_modules(model):
        module.delete_adapter(name)
    del state.configs[name]
    remaining = tuple(n for n in state.active if n != name)
    state.active = remaining
    for module in _adapter_modules(model):
        module.set_active(remaining)


def adapter_parameters(model: nn.Module, name: str) -> dict[str, nn.Parameter]:
    """Every parameter belonging to adapter ``name`` (A, B, extra vectors, saved-module copies), by model name."""
    params = {}
    for mname, module in model.named_modules():
        if isinstance(module, LoraLayer):
            for attr in module.adapter_param_names:
                store = getattr(module, attr)
                if name in store:
                    params[f"{mname}.{attr}.{name}"] = store[name]
        elif isinstance(module, ModulesToSave) and name in module.modules_to_save:
            for pname, p in module.modules_to_save[name].named_parameters():
                params[f"{mname}.modules_to_save.{name}.{pname}"] = p
    return params


@dataclass
class TrainableSummary:
    """Trainable versus total parameter counts, with a row per trainable tensor."""

    trainable: int
    total: int
    rows: list[tuple[str, tuple[int, ...], int]]

    @property
    def ratio(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        return (
            f"trainable {self.trainable:,} of {self.total:,} parameters ({100 * self.ratio:.4f}%) "
            f"in {len(self.rows)} tensors"
        )

    def table(self) -> str:
        width = max((len(r[0]) for r in self.rows), default=10)
        lines = [f"{'parameter':<{width}}  {'shape':>16}  {'count':>10}"]
        lines += [f"{n:<{width}}  {str(tuple(s)):>16}  {c:>10,}" for n, s, c in self.rows]
        return "\n".join(lines + [str(self)])


def trainable_summary(model: nn.Module) -> TrainableSummary:
    """Count parameters that require grad against all parameters (shared tensors counted once)."""
    rows, trainable, total = [], 0, 0
    for pname, p in model.named_parameters():
        count = p.numel()
        total += count
        if p.requires_grad:
            trainable += count
            rows.append((pname, tuple(p.shape), count))
    return TrainableSummary(trainable, total, rows)
