"""Which modules of a model an adapter targets, following PEFT's matching rules.

A list entry matches a module whose name equals it or ends with ``"." + entry``; a string is a regex
that must match the full module name; ``"all-linear"`` is every linear layer except the output head.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator

from torch import nn

from lorakit.core.config import ALL_LINEAR, LoraConfig
from lorakit.core.errors import ConfigError, TargetNotFoundError
from lorakit.core.modules import WRAPPER_PARTS, Wrapper, is_linear, output_head, unwrap

__all__ = ["find_targets", "find_saved_modules", "is_adaptable", "is_linear", "layer_index", "logical_modules",
           "name_matches", "unwrap"]

LAYER_LIST_NAMES = ("layers", "h", "block", "blocks", "layer")
_TASK_HEAD_NAMES = ("classifier", "score")  # PEFT adds both for SEQ_CLS whichever the model has


def is_adaptable(module: nn.Module) -> bool:
    return is_linear(module) or isinstance(module, nn.Embedding)


def logical_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(name, module)`` as the user sees the model: a LoRA wrapper stands for the layer it wraps."""
    for name, module in model.named_modules():
        if name and not any(part in name + "." for part in WRAPPER_PARTS):
            yield name, module


def name_matches(name: str, pattern: list[str] | str | None) -> bool:
    """PEFT's rule: a list matches by exact name or dotted suffix, a string by full regex match."""
    if pattern is None:
        return False
    if isinstance(pattern, str):
        return re.fullmatch(pattern, name) is not None
    return any(name == key or name.endswith("." + key) for key in pattern)


def layer_index(name: str, layers_pattern: str | None) -> int | None:
    """Index of the transformer block containing module ``name`` (``model.layers.3.mlp`` -> 3)."""
    patterns = [layers_pattern] if layers_pattern else LAYER_LIST_NAMES
    for pattern in patterns:
        match = re.match(rf"(?:.*\.)?{re.escape(pattern)}\.(\d+)\.", name)
        if match:
            return int(match.group(1))
    return None


def find_targets(model: nn.Module, config: LoraConfig) -> list[str]:
    """Names of the modules ``config`` adapts, in model order. Raises when nothing matches."""
    head = output_head(model)
    saved = config.modules_to_save or []
    targets = []
    for name, module in logical_modules(model):
        base = unwrap(module)
        if name_matches(name, saved) or (isinstance(module, Wrapper) and module.trains_whole_module):
            continue
        if config.targets == ALL_LINEAR:
            if not is_linear(base) or base is head:
                continue
        elif not name_matches(name, config.targets):
            continue
        if config.exclude is not None and name_matches(name, config.exclude):
            continue
        if config.layers is not None and layer_index(name, config.layers_pattern) not in config.layers:
            continue
        if not is_adaptable(base):
            if config.targets == ALL_LINEAR or isinstance(config.targets, str):
                continue
            raise ConfigError(
                f"target {name!r} is a {type(base).__name__}; lorakit adapts Linear, Conv1D and Embedding layers — "
                "name the linear layers inside it instead"
            )
        targets.append(name)
    if not targets:
        raise TargetNotFoundError(_no_match_message(model, config))
    return targets


def find_saved_modules(model: nn.Module, config: LoraConfig) -> list[str]:
    """Names of the modules trained in full (``modules_to_save``); each entry must match something."""
    names = []
    for key in config.modules_to_save or []:
        found = [name for name, _ in logical_modules(model) if name_matches(name, [key])]
        if not found and key not in _TASK_HEAD_NAMES:
            raise TargetNotFoundError(f"modules_to_save entry {key!r} matches no module; {_suggest(model, key)}")
        names.extend(found)
    return names


def _suggest(model: nn.Module, key: str) -> str:
    leaves = sorted({name.rsplit(".", 1)[-1] for name, m in logical_modules(model) if is_adaptable(unwrap(m))})
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], leaves, n=3, cutoff=0.4)
    hint = f"closest module names: {', '.join(close)}" if close else f"adaptable module names: {', '.join(leaves[:12])}"
    return hint


def _no_match_message(model: nn.Module, config: LoraConfig) -> str:
    targets = config.targets
    where = f" in layers {config.layers}" if config.layers is not None else ""
    if isinstance(targets, list):
        hints = "; ".join(f"{t!r}: {_suggest(model, t)}" for t in targets)
        return f"targets {targets} match no module{where}; {hints}"
    return f"targets {targets!r} match no module{where}; {_suggest(model, targets if targets != ALL_LINEAR else 'linear')}"
