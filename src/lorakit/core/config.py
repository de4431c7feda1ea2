"""LoraConfig: the validated description of an adapter, mapped 1:1 onto PEFT's ``adapter_config.json``.

PEFT's field names are understood as aliases (:data:`ALIASES`: ``LoraConfig(lora_alpha=16,
target_modules=["q_proj"])``), and an unknown name is a :class:`ConfigError` naming every unknown key with the
closest valid one.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
from dataclasses import dataclass, field
from typing import Any

from lorakit.core.errors import ConfigError
from lorakit.core.names import rename_aliases, unknown_keys
from lorakit.core.targeting import ALL_LINEAR, is_all_linear, pattern_value

BIAS_MODES = ("none", "all", "lora_only")
INIT_SCHEMES = ("default", "gaussian", "pissa", "olora")
_PISSA_NITER = re.compile(r"^pissa_niter_(\d+)$")
ALIASES = {
    "lora_alpha": "alpha",
    "target_modules": "targets",
    "lora_dropout": "dropout",
    "exclude_modules": "exclude",
    "layers_to_transform": "layers",
}
"""PEFT's ``LoraConfig`` names accepted for lorakit's fields."""


@dataclass
class LoraConfig:
    """How to adapt a model: which modules, at what rank and scale.

    The update of an adapted weight is ``ΔW = scale · B·A`` with ``A: (r, in)``, ``B: (out, r)`` and
    ``scale = alpha / r`` (``alpha / √r`` with ``use_rslora``).
    """

    r: int = 8
    """Rank of the update. Higher ranks can express more, at r·(in+out) parameters per module."""
    alpha: float = 16.0
    """Scale numerator: the update is multiplied by ``alpha / r`` (or ``alpha / √r``)."""
    dropout: float = 0.0
    """Dropout probability on the adapter's input during training; 0 makes no copy of the input."""
    targets: list[str] | str = ALL_LINEAR
    """Module-name suffixes (``["q_proj", "v_proj"]``), a regex matched against the full module name,
    or ``"all-linear"``: every linear layer except the output head."""
    exclude: list[str] | str | None = None
    """Modules never adapted even when ``targets`` matches them (suffixes or a regex)."""
    layers: list[int] | None = None
    """Indices of transformer blocks to adapt (``None``: all)."""
    layers_pattern: str | list[str] | None = None
    """Name(s) of the module list holding the blocks (``layers``, ``h``…); without one, the first numbered
    segment of a module's name is its block index (PEFT's rule, :mod:`lorakit.core.targeting`)."""
    rank_pattern: dict[str, int] = field(default_factory=dict)
    """Per-module rank overrides. A key matches the end of a module name: a plain name (``q_proj``), a dotted
    suffix (``layers.0.self_attn.q_proj``) or a regex (``q_proj|v_proj``); the first matching key wins."""
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    """Per-module alpha overrides, matched like ``rank_pattern``."""
    bias: str = "none"
    """``none``: biases stay frozen; ``all``: every bias trains; ``lora_only``: biases of adapted modules train."""
    modules_to_save: list[str] | None = None
    """Modules trained in full and saved with the adapter (e.g. a classification head ``classifier``)."""
    use_rslora: bool = False
    """Rank-stabilised scale ``alpha / √r`` so that higher ranks keep learning."""
    use_dora: bool = False
    """Weight-decomposed LoRA: a learned magnitude per output feature times the normalised direction."""
    init: str = "default"
    """``default``: Kaiming-uniform A, zero B; ``gaussian``: A ~ N(0, 1/r), zero B; ``pissa``,
    ``pissa_niter_K``, ``olora``: start from principal directions of W₀ (W₀ keeps the residual)."""
    fan_in_fan_out: bool | None = None
    """Weights stored as (in, out), as transformers' ``Conv1D`` does; detected per module when ``None``."""
    task_type: str | None = None
    """PEFT task type recorded in the file (``CAUSAL_LM``, ``SEQ_CLS``…); informational."""
    base_model_name_or_path: str | None = None
    """Name or path of the base model the adapter was made for; informational."""

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_dict(cls, values: dict[str, Any], prefix: str = "") -> "LoraConfig":
        """A validated config from a mapping that may use PEFT's names (:data:`ALIASES`).

        Raises:
            ConfigError: unknown keys (all named at once, with "did you mean"), a key given twice under two names,
                or a bad value.
        """
        if not isinstance(values, dict):
            raise ConfigError(
                f"{prefix.rstrip('.') or 'lora'} must be a mapping of LoraConfig fields, got {type(values).__name__}"
            )
        renamed = rename_aliases(values, ALIASES, prefix)
        problem = unknown_keys(renamed, [f.name for f in dataclasses.fields(cls)], prefix)
        if problem:
            raise ConfigError(problem)
        return cls(**renamed)

    def validate(self) -> None:
        """Check every field; raise :class:`ConfigError` naming the field and what to do."""
        _check_rank("r", self.r)
        for key, rank in self.rank_pattern.items():
            _check_rank(f"rank_pattern[{key!r}]", rank)
        _check_alpha("alpha", self.alpha)
        for key, alpha in self.alpha_pattern.items():
            _check_alpha(f"alpha_pattern[{key!r}]", alpha)
        if (
            isinstance(self.dropout, bool)
            or not isinstance(self.dropout, (int, float))
            or not 0.0 <= self.dropout < 1.0
        ):
            raise ConfigError(f"dropout must be a number in [0, 1), got {self.dropout!r}")
        if isinstance(self.targets, str):
            if is_all_linear(self.targets):
                self.targets = ALL_LINEAR
            else:
                _check_regex("targets", self.targets)
                if self.layers is not None or self.layers_pattern:
                    raise ConfigError(
                        "layers / layers_to_transform and layers_pattern cannot be used with a regex "
                        "targets string (PEFT refuses it too): put the block index in the regex, or "
                        "give targets as a list of module names"
                    )
        elif not self.targets or not all(isinstance(t, str) and t for t in self.targets):
            raise ConfigError(
                "targets must be 'all-linear', a regex string or a non-empty list of module names, "
                f"got {self.targets!r}"
            )
        else:
            self.targets = list(self.targets)
        if isinstance(self.exclude, str):
            _check_regex("exclude", self.exclude)
        if self.layers is not None:
            if isinstance(self.layers, int):
                self.layers = [self.layers]
            if not isinstance(self.layers, (list, tuple)) or not all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in self.layers
            ):
                raise ConfigError(f"layers must be a list of non-negative block indices, got {self.layers!r}")
            self.layers = list(self.layers)
        if self.layers_pattern is not None:
            names = [self.layers_pattern] if isinstance(self.layers_pattern, str) else self.layers_pattern
            if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
                raise ConfigError(
                    f"layers_pattern must be a module-list name or a list of them, got {self.layers_pattern!r}"
                )
            if not isinstance(self.layers_pattern, str):
                self.layers_pattern = list(self.layers_pattern)
        for field_name in ("rank_pattern", "alpha_pattern"):
            for key in getattr(self, field_name):
                _check_regex(f"{field_name} key", key)
        if self.bias not in BIAS_MODES:
            raise ConfigError(f"bias must be one of {', '.join(BIAS_MODES)}, got {self.bias!r}")
        if self.modules_to_save is not None:
            if isinstance(self.modules_to_save, str):
                self.modules_to_save = [self.modules_to_save]
            self.modules_to_save = list(self.modules_to_save)
        for name in ("use_rslora", "use_dora"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.fan_in_fan_out is not None and not isinstance(self.fan_in_fan_out, bool):
            raise ConfigError(f"fan_in_fan_out must be true, false or null, got {self.fan_in_fan_out!r}")
        if self.init not in INIT_SCHEMES and not _PISSA_NITER.match(str(self.init)):
            raise ConfigError(f"init must be one of {', '.join(INIT_SCHEMES)} or pissa_niter_K, got {self.init!r}")

    def rank_for(self, module_name: str) -> int:
        """Rank of ``module_name``: the first matching ``rank_pattern`` key, else ``r``."""
        return pattern_value(self.rank_pattern, module_name, self.r)

    def alpha_for(self, module_name: str) -> float:
        """Alpha of ``module_name``: the first matching ``alpha_pattern`` key, else ``alpha``."""
        return pattern_value(self.alpha_pattern, module_name, self.alpha)

    def scale_for(self, module_name: str) -> float:
        """The multiplier of B·A for ``module_name``: α/r, or α/√r with rsLoRA."""
        r, alpha = self.rank_for(module_name), self.alpha_for(module_name)
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r

    def replace(self, **changes: Any) -> "LoraConfig":
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (lorakit field names)."""
        return dataclasses.asdict(self)


def _check_rank(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer rank, got {value!r}")


def _check_alpha(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a positive number, got {value!r}")


def _check_regex(name: str, pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as err:
        raise ConfigError(f"{name} is not a valid regular expression ({err}): {pattern!r}") from None


_DATACLASS_INIT = LoraConfig.__init__
_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(LoraConfig))


def _init_with_aliases(self: LoraConfig, *args: Any, **kwargs: Any) -> None:
    unknown = [k for k in kwargs if k not in _FIELD_NAMES]
    if unknown:
        kwargs = rename_aliases(kwargs, ALIASES)
        problem = unknown_keys(kwargs, _FIELD_NAMES)
        if problem:
            raise ConfigError(f"LoraConfig: {problem}")
    _DATACLASS_INIT(self, *args, **kwargs)


_init_with_aliases.__doc__ = _DATACLASS_INIT.__doc__
_init_with_aliases.__signature__ = inspect.signature(_DATACLASS_INIT)
LoraConfig.__init__ = _init_with_aliases
