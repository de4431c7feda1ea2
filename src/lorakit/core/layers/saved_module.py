"""ModulesToSave: a module trained in full (e.g. a classification head), one copy per adapter."""

from __future__ import annotations

import copy

from torch import nn

from lorakit.core.modules import Wrapper


class ModulesToSave(Wrapper):
    """Holds the frozen ``original_module`` and a trainable copy per adapter in ``modules_to_save``.

    Forward uses the copy of the first active adapter that has one, else the original.
    """

    trains_whole_module = True

    @property
    def wrapped(self) -> nn.Module:
        return self.original_module

    @property
    def surface(self) -> nn.Module:
        return self.current()

    def __init__(self, original_module: nn.Module) -> None:
        super().__init__()
        self.original_module = original_module
        self.modules_to_save = nn.ModuleDict()
        self.active: tuple[str, ...] = ()
        self.disabled = False

    @property
    def adapter_names(self) -> list[str]:
        return list(self.modules_to_save.keys())

    def add_adapter(self, name: str) -> None:
        trainable = copy.deepcopy(self.original_module)
        for p in trainable.parameters():
            p.requires_grad_(True)
        self.modules_to_save[name] = trainable

    def delete_adapter(self, name: str) -> None:
        if name in self.modules_to_save:
            del self.modules_to_save[name]
        self.active = tuple(n for n in self.active if n != name)

    def set_active(self, names: tuple[str, ...]) -> None:
        self.active = tuple(n for n in names if n in self.modules_to_save)

    def current(self) -> nn.Module:
        if self.disabled or not self.active:
            return self.original_module
        return self.modules_to_save[self.active[0]]

    def forward(self, *args, **kwargs):
        return self.current()(*args, **kwargs)
