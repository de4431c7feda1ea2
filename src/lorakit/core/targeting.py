"""Which modules of a model an adapter touches, at which rank and scale: PEFT 0.21's rules, in one place.

:func:`resolve` is the rule; every other part of lorakit (inject, file layout, save) asks it. What it does,
in PEFT's order for each module name ``key`` (wrapper internals and LoRA layers' own children never count):

1. ``exclude_modules``: a string is a regex that must match ``key`` whole; a list matches ``key`` itself or a
   dotted suffix of it. An excluded module is never adapted.
2. ``modules_to_save``: a module trained in full, and everything inside it, is never adapted
   (PEFT's ``(^|.*\\.)ENTRY($|\\..*)``, with the entry used as a regex). With ``task_type`` ``SEQ_CLS``
   the heads ``classifier`` and ``score`` are saved modules too, as PEFT adds them.
3. ``target_modules``: ``"all-linear"`` (any case) is every ``nn.Linear``/``Conv1D`` except the output
   embedding (or, for ``SEQ_CLS`` models without one, the classifier head); another string is a regex that
   must match ``key`` whole; a list matches ``key`` itself, or a dotted suffix of it.
4. ``layers_to_transform`` (an int or a list; with a list target matched by suffix only, as in PEFT): the
   block index is the first number that follows ``<layers_pattern>.`` (a string or a list of them), or, with
   no pattern, the first ``.<name>.<number>.`` segment of ``key``.
5. ``rank_pattern`` / ``alpha_pattern``: the first key (in the mapping's order) for which
   ``(.*\\.)?(KEY)$`` matches ``key`` from its start gives the value; a key is thus a plain name, a dotted
   suffix or a regex for the end of the name.

A matched module lorakit cannot adapt (anything but Linear, Conv1D, Embedding, Conv1d/2d/3d — e.g. a fused
MoE expert block, whose experts are parameters, not modules) is refused by name, as PEFT refuses it.
Source: ``peft/tuners/tuners_utils.py`` (``check_target_module_exists``, ``_maybe_include_all_linear_layers``),
``peft/utils/other.py`` (``get_pattern_key``, ``_set_trainable``).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from lorakit.core.errors import ConfigError, TargetNotFoundError
from lorakit.core.modules import Wrapper, is_linear, output_head, unwrap

if TYPE_CHECKING:
    from lorakit.core.config import LoraConfig

__all__ = [
    "ALL_LINEAR",
    "Resolution",
    "find_saved_modules",
    "find_targets",
    "is_adaptable",
    "is_linear",
    "conv_refusal",
    "layer_index",
    "layer_kind",
    "logical_modules",
    "name_matches",
    "pattern_key",
    "resolve",
    "unwrap",
]

ALL_LINEAR = "all-linear"
SEQ_CLS_HEADS = ("classifier", "score")  # PEFT saves these for task_type SEQ_CLS, whichever the model has
CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def is_all_linear(targets: Any) -> bool:
    """``targets`` is PEFT's ``all-linear`` shorthand (matched case-insensitively, as PEFT does)."""
    return isinstance(targets, str) and targets.lower() == ALL_LINEAR


def layer_kind(module: nn.Module) -> str | None:
    """``linear``, ``embedding`` or ``conv`` for a module lorakit can adapt (unwrapped first), else None."""
    base = unwrap(module)
    if is_linear(base):
        return "linear"
    if isinstance(base, nn.Embedding):
        return "embedding"
    if isinstance(base, CONV_TYPES):
        return "conv"
    return None


def conv_refusal(base: nn.Module, rank: int) -> str | None:
    """Why a LoRA of rank ``rank`` on convolution ``base`` would not match PEFT's outputs, or None when it would."""
    if any(d != 1 for d in base.dilation):
        return (
            f"dilation {tuple(base.dilation)} "
            "(PEFT's conv LoRA ignores dilation: its merged and unmerged outputs differ)"
        )
    if base.padding_mode != "zeros":
        return f"padding_mode {base.padding_mode!r} (PEFT's conv LoRA pads with zeros)"
    if rank % base.groups:
        return f"groups={base.groups} and rank {rank} (the rank must be a multiple of the groups)"
    return None


def _check_supported(name: str, kind: str, module: nn.Module, config: LoraConfig) -> None:
    """Refuse, before anything is touched, a target whose kind lorakit cannot adapt with ``config``'s options."""
    if kind == "conv":
        refusal = conv_refusal(unwrap(module), config.rank_for(name))
        if refusal:
            raise ConfigError(f"target {name!r}: lorakit cannot adapt a convolution with {refusal}; exclude it")
    if kind != "linear" and config.use_dora:
        raise ConfigError(
            f"target {name!r} is {'an embedding' if kind == 'embedding' else 'a convolution'}: "
            "lorakit's DoRA adapts linear layers only; exclude it "
            "or turn use_dora off"
        )
    if kind == "conv" and config.init not in ("default", "gaussian"):
        raise ConfigError(
            f"target {name!r} is a convolution: init {config.init!r} is for linear layers; exclude it "
            "or use init default/gaussian"
        )


def is_adaptable(module: nn.Module) -> bool:
    return layer_kind(module) is not None


def pattern_key(keys: Iterator[str] | list[str], name: str) -> str | None:
    """The first ``rank_pattern``/``alpha_pattern`` key matching module ``name`` (PEFT's ``get_pattern_key``):
    ``(.*\\.)?(KEY)$`` matched from the start of ``name``. None when no key matches."""
    for key in keys:
        if re.match(rf"(.*\.)?({key})$", name):
            return key
    return None


def pattern_value(pattern: Mapping[str, Any], name: str, default: Any) -> Any:
    """``pattern[key]`` for the :func:`pattern_key` of ``name``, else ``default``."""
    key = pattern_key(list(pattern), name)
    return default if key is None else pattern[key]


def name_matches(name: str, pattern: list[str] | str | None) -> bool:
    """PEFT's rule for ``target_modules``/``exclude_modules``: a list matches by exact name or dotted suffix,
    a string by full regex match."""
    if pattern is None:
        return False
    if isinstance(pattern, str):
        return re.fullmatch(pattern, name) is not None
    return any(name == key or name.endswith("." + key) for key in pattern)


def layer_index(name: str, layers_pattern: str | list[str] | None) -> int | None:
    """Index of the block holding module ``name`` (``model.layers.3.mlp.up_proj`` -> 3), by PEFT's rule: the first
    number after ``<layers_pattern>.`` or, without a pattern, in the first ``.<name>.<number>.`` segment."""
    if not layers_pattern:
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", name)
    else:
        match = None
        for pattern in [layers_pattern] if isinstance(layers_pattern, str) else layers_pattern:
            match = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", name)
            if match:
                break
    return int(match.group("idx")) if match else None


def logical_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(name, module)`` as the user sees the model: a wrapper stands for the layer it wraps, and nothing
    inside a wrapper (base layer, saved copies, LoRA factors) is listed."""
    inside: list[str] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(prefix) for prefix in inside):
            continue
        if isinstance(module, Wrapper):
            inside.append(name + ".")
        yield name, module


@dataclass(frozen=True)
class Resolution:
    """What a config resolves to on a model: ``targets`` (module name -> kind) and ``saved`` module names."""

    targets: dict[str, str]
    saved: list[str]


def saved_entries(config: LoraConfig) -> list[str]:
    """``modules_to_save`` as PEFT applies it: the config's entries plus the classifier heads for the SEQ_CLS and
    TOKEN_CLS tasks."""
    entries = list(config.modules_to_save or [])
    if (config.task_type or "").upper() in ("SEQ_CLS", "TOKEN_CLS"):
        entries += [head for head in SEQ_CLS_HEADS if head not in entries]
    return entries


def resolve(model: nn.Module, config: LoraConfig) -> Resolution:
    """The modules ``config`` adapts on ``model`` (with their layer kind) and the modules it saves in full.

    Raises:
        TargetNotFoundError: nothing matches ``targets`` (with the closest module names).
        ConfigError: a matched module is of a kind lorakit cannot adapt, or a ``modules_to_save`` entry names a
            module that is also a LoRA target.
    """
    entries = saved_entries(config)
    saved = _saved_modules(model, config, entries)
    saved_rules = [re.compile(rf"(^|.*\.){entry}($|\..*)") for entry in entries]
    all_linear = _all_linear_names(model, config) if is_all_linear(config.targets) else None
    targets: dict[str, str] = {}
    for name, module in logical_modules(model):
        if isinstance(module, Wrapper) and module.trains_whole_module:
            continue
        if config.exclude is not None and name_matches(name, config.exclude):
            continue
        if any(rule.match(name) for rule in saved_rules):
            continue
        if not _target_matches(name, config, all_linear):
            continue
        kind = layer_kind(module)
        if kind is None:
            raise ConfigError(
                f"target {name!r} is a {type(unwrap(module)).__name__}; lorakit adapts Linear, Conv1D, Conv1d/2d/3d "
                "and Embedding layers (fused expert parameters and other modules are not supported) — target the "
                "layers inside it, or exclude it"
            )
        _check_supported(name, kind, module, config)
        targets[name] = kind
    overlap = [name for name in saved if name in targets]
    if overlap:
        raise ConfigError(
            f"modules_to_save entry matches {overlap[0]!r}, which is also a LoRA target; "
            "a module is either adapted or saved in full, not both"
        )
    if not targets:
        raise TargetNotFoundError(_no_match_message(model, config))
    return Resolution(targets, saved)


def find_targets(model: nn.Module, config: LoraConfig) -> list[str]:
    """Names of the modules ``config`` adapts, in model order (see :func:`resolve`)."""
    return list(resolve(model, config).targets)


def find_saved_modules(model: nn.Module, config: LoraConfig) -> list[str]:
    """Names of the modules trained in full (``modules_to_save``), in model order (see :func:`resolve`)."""
    return list(resolve(model, config).saved)


def _target_matches(name: str, config: LoraConfig, all_linear: set[str] | None) -> bool:
    targets = config.targets
    if all_linear is not None:
        if name not in all_linear:
            return False
    elif isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    elif name in targets:
        return True
    elif not any(name.endswith("." + key) for key in targets):
        return False
    layers = config.layers
    if layers is None or (isinstance(layers, list) and not layers):
        return True
    return layer_index(name, config.layers_pattern) in layers


_FUSED_EXPERT_PARAMS = ("gate_up_proj", "down_proj", "gate_proj", "up_proj")


def _all_linear_names(model: nn.Module, config: LoraConfig) -> set[str]:
    fused = [
        name
        for name, module in logical_modules(model)
        if any(p.dim() == 3 and pname in _FUSED_EXPERT_PARAMS for pname, p in module.named_parameters(recurse=False))
    ]
    if fused:
        raise ConfigError(
            f"targets 'all-linear': {fused[0]} holds fused expert weights as parameters, which PEFT's "
            "all-linear adapts (through target_parameters) and lorakit cannot; list the modules to adapt "
            "instead (e.g. targets=['q_proj', 'k_proj', 'v_proj', 'o_proj'])"
        )
    names = {name for name, module in logical_modules(model) if is_linear(unwrap(module))}
    head = output_head(model)
    if head is not None:
        names -= {name for name, module in logical_modules(model) if unwrap(module) is head}
    elif (config.task_type or "").upper() == "SEQ_CLS":
        for attr in SEQ_CLS_HEADS:
            if getattr(model, attr, None) is not None:
                names.discard(attr)
                break
    return names


def _saved_modules(model: nn.Module, config: LoraConfig, entries: list[str]) -> list[str]:
    """PEFT's ``_set_trainable`` rule: a module whose name ends with an entry (plain ``endswith``); nothing inside
    an already-saved module. An entry of the config's own that matches nothing is an error."""
    found: list[str] = []
    matched: set[str] = set()
    for name, module in logical_modules(model):
        if any(name.startswith(prefix + ".") for prefix in found):
            continue
        hits = [entry for entry in entries if name.endswith(entry)]
        if hits:
            found.append(name)
            matched.update(hits)
    for entry in config.modules_to_save or []:
        if entry not in matched and entry not in SEQ_CLS_HEADS:
            raise TargetNotFoundError(f"modules_to_save entry {entry!r} matches no module; {_suggest(model, entry)}")
    return found


def _suggest(model: nn.Module, key: str) -> str:
    leaves = sorted({name.rsplit(".", 1)[-1] for name, m in logical_modules(model) if is_adaptable(m)})
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], leaves, n=3, cutoff=0.4)
    return f"closest module names: {', '.join(close)}" if close else f"adaptable module names: {', '.join(leaves[:12])}"


def _no_match_message(model: nn.Module, config: LoraConfig) -> str:
    targets = config.targets
    where = f" in layers {config.layers}" if config.layers is not None else ""
    if isinstance(targets, list):
        hints = "; ".join(f"{t!r}: {_suggest(model, t)}" for t in targets)
        return f"targets {targets} match no module{where}; {hints}"
    return (
        f"targets {targets!r} match no module{where}; "
        f"{_suggest(model, 'linear' if is_all_linear(targets) else targets)}"
    )
