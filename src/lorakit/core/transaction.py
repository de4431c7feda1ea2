"""All or nothing: an operation that changes a model's adapters either completes or leaves the model exactly
as it was — the same module tree, the same adapters per layer, the same tensors, the same trainability and
the same lorakit state (``inject``, ``load_adapter``)."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from lorakit.core.modules import Wrapper

_MODEL_KEYS = ("_lorakit", "lorakit_fingerprint")


@contextlib.contextmanager
def all_or_nothing(model: nn.Module, keep: Iterable[torch.Tensor] = ()) -> Iterator[nn.Module]:
    """Inside the block ``model`` may be changed; on any exception it is put back and the exception re-raised.

    Restored: every module's children (new wrappers disappear, replaced modules come back), the adapters each
    existing wrapper holds and which are active, ``requires_grad`` of every parameter, lorakit's state on the
    model, and the values of the tensors in ``keep`` (those the block may write in place, e.g. a base
    weight PiSSA rewrites or a bias a file sets; copied on entry, so pass only what the block may write).
    """
    children = {module: dict(module._modules) for module in model.modules()}
    wrappers = {
        module: (set(module.adapter_names), tuple(module.active))
        for module in model.modules()
        if isinstance(module, Wrapper) and hasattr(module, "adapter_names")
    }
    trainable = {p: p.requires_grad for p in model.parameters()}
    state = {key: _copy(model.__dict__[key]) for key in _MODEL_KEYS if key in model.__dict__}
    kept = [(t, t.detach().clone()) for t in keep]
    try:
        yield model
    except BaseException:
        _restore(model, children, wrappers, trainable, state, kept)
        raise


def _copy(value):
    """A copy of ``value`` whose dict/list/set fields are copied one level deep (tensors stay shared)."""
    if not hasattr(value, "__dict__"):
        return value
    duplicate = copy.copy(value)
    for attr, field in vars(value).items():
        if isinstance(field, (dict, list, set)):
            setattr(duplicate, attr, copy.copy(field))
    return duplicate


def _restore(model, children, wrappers, trainable, state, kept) -> None:
    for module in model.modules():
        if isinstance(module, Wrapper) and hasattr(module, "adapter_names"):
            before = wrappers.get(module, (set(), ()))[0]
            for name in [n for n in module.adapter_names if n not in before]:
                module.delete_adapter(name)
    for module, saved in children.items():
        module._modules.clear()
        module._modules.update(saved)
    for module, (_, active) in wrappers.items():
        module.set_active(active)
    for p, flag in trainable.items():
        p.requires_grad_(flag)
    for key in _MODEL_KEYS:
        model.__dict__.pop(key, None)
    model.__dict__.update(state)
    with torch.no_grad():
        for tensor, value in kept:
            tensor.copy_(value)
