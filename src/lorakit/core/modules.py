"""What a module *is* to lorakit, independent of the LoRA layer classes: wrappers, linears, the output head.

A leaf module: it imports no other part of lorakit, so layers, quantisation and targeting can all use it.
"""

from __future__ import annotations

import functools
import inspect
from abc import ABC, abstractmethod

from torch import nn

# path segments that only exist inside a wrapper (PEFT's names, which lorakit keeps)
WRAPPER_PARTS = (".base_layer", ".original_module", ".modules_to_save.")


_OWN = frozenset({"base_layer", "original_module", "modules_to_save", "wrapped", "surface"})


class Wrapper(nn.Module, ABC):
    """A module standing in for another one in the model tree (a LoRA layer, a saved module).

    Subclasses set :attr:`wrapped` to the module they stand for; :func:`unwrap` returns it.
    ``trains_whole_module`` is True for wrappers that train a full copy (``modules_to_save``), which LoRA
    never targets inside.
    """

    trains_whole_module = False

    @property
    @abstractmethod
    def wrapped(self) -> nn.Module:
        """The module this wrapper stands for."""

    @property
    def surface(self) -> nn.Module:
        """The module whose attributes this wrapper answers with (the wrapped one unless a subclass says)."""
        return self.wrapped

    def __getattr__(self, name: str):
        """Attributes the wrapper lacks (``weight``, ``bias``, ``in_features``, ``num_embeddings``, ``nf``…) are
        the surface module's, so model code that reads them sees the layer it expects."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in _OWN or name.startswith("_"):
                raise
            return getattr(self.surface, name)


def unwrap(module: nn.Module) -> nn.Module:
    """The module a wrapper stands for (its ``base_layer`` / ``original_module``), or ``module`` itself."""
    return module.wrapped if isinstance(module, Wrapper) else module


def is_linear(module: nn.Module) -> bool:
    """nn.Linear and its subclasses (bitsandbytes' quantised linears are ones) or transformers' Conv1D."""
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def inside_wrapper(name: str) -> bool:
    """Whether module path ``name`` lies inside a wrapper (``…q_proj.base_layer``, ``…modules_to_save.x``)."""
    return any(part in f".{name}." for part in (".base_layer.", ".original_module.", ".modules_to_save."))


def output_head(model: nn.Module) -> nn.Module | None:
    """The model's output embedding (``lm_head``) unwrapped, or None for models without one."""
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    return unwrap(head) if head is not None else None


@functools.cache
def cache_argument(model_class: type) -> str:
    """The keyword ``model_class.forward`` (and ``generate``) takes the KV cache by: ``cache`` in current
    transformers (which warns on the old name), ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"
