"""Import paths from before the ``core/`` layout, kept working: ``lorakit.errors`` is ``lorakit.core.errors``.

``lorakit.merge`` is not aliased: that name is the public function :func:`lorakit.merge`.

An alias loads its target only when imported, and both names then refer to one module object (so
``isinstance`` checks and monkeypatching see the same classes and functions).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

ALIASES = {
    "lorakit.config": "lorakit.core.config",
    "lorakit.errors": "lorakit.core.errors",
    "lorakit.targeting": "lorakit.core.targeting",
    "lorakit.model": "lorakit.core.model",
    "lorakit.merge_quantized": "lorakit.core.merge_quantized",
    "lorakit.quant": "lorakit.core.quant",
    "lorakit.bases": "lorakit.core.bases",
    "lorakit.io": "lorakit.core.files",
    "lorakit.atomic": "lorakit.core.files.atomic",
    "lorakit.peft_format": "lorakit.core.files.peft_format",
    "lorakit.layers.dora": "lorakit.core.layers.variants.dora",
    "lorakit.layers": "lorakit.core.layers",
    "lorakit.init": "lorakit.core.layers.variants.principal",
    "lorakit.plain": "lorakit.core.layers.variants.save_form",
    "lorakit.quickstart": "lorakit.cli.quickstart",
}


def target_of(fullname: str) -> str | None:
    """The module an old name stands for (``lorakit.layers.linear`` -> ``lorakit.core.layers.linear``), or None."""
    for old, new in ALIASES.items():
        if fullname == old or fullname.startswith(old + "."):
            return new + fullname[len(old) :]
    return None


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target
        self.target_spec = None

    def create_module(self, spec):
        module = importlib.import_module(self.target)
        self.target_spec = module.__spec__
        return module

    def exec_module(self, module) -> None:
        """The target is already executed; give it back its own spec (the import system set the alias's)."""
        module.__spec__ = self.target_spec


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        new = target_of(fullname)
        if new is None:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(new))


def install() -> None:
    """Put the alias finder on ``sys.meta_path`` once."""
    if not any(isinstance(finder, _AliasFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder())
