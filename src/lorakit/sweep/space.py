"""The search space of a sweep: which config keys vary, over which values, and how a trial picks them.

Each entry maps a training-config key (dotted, as ``--set`` takes it) to one of:

- a list of choices: ``lora.r: [4, 8, 16]``, ``lora.targets: [attention, all-linear, [q_proj, v_proj]]``
- a range: ``train.lr: {low: 1e-4, high: 1e-3, log: true}``; integer when both ends are integers
  (``train.max_steps: {low: 20, high: 80, step: 20}``); ``step`` makes it finite (needed by the grid sampler)
- a ratio of another key: ``lora.alpha: {ratio_of: lora.r, values: [1, 2]}`` sets alpha to 1·r or 2·r

Optuna names the parameter by its key (a ratio by ``lora.alpha/lora.r``). A key that is not in the training
config, an empty choice list, ``low > high`` or a value the training config refuses is a
:class:`~lorakit.core.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from dataclasses import dataclass
from typing import Any

import optuna
from pydantic import BaseModel

from lorakit.core.config import LoraConfig
from lorakit.core.errors import ConfigError
from lorakit.train.config import RunConfig, load_config

_RANGE_KEYS = {"low", "high", "log", "step"}
_RATIO_KEYS = {"ratio_of", "values"}
_FIXED_KEYS = {"output"}  # chosen by the sweep itself


@dataclass(frozen=True)
class Param:
    """One searched key. ``kind`` is ``choice``, ``int``, ``float`` or ``ratio``."""

    key: str
    kind: str
    choices: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None
    ratio_of: str | None = None

    @property
    def name(self) -> str:
        """The Optuna parameter name."""
        return f"{self.key}/{self.ratio_of}" if self.kind == "ratio" else self.key

    @property
    def finite(self) -> bool:
        return self.kind in ("choice", "ratio") or self.step is not None or (self.kind == "int" and not self.log)

    def grid(self) -> list[Any]:
        """Every value (Optuna's stored form) when the parameter is finite."""
        if self.kind in ("choice", "ratio"):
            return [_stored(v) for v in self.choices]
        step = self.step if self.step is not None else 1
        count = int(math.floor((self.high - self.low) / step + 1e-9)) + 1
        values = [self.low + i * step for i in range(count)]
        return [int(round(v)) for v in values] if self.kind == "int" else values

    def suggest(self, trial: optuna.Trial) -> Any:
        """Ask ``trial`` for this parameter; returns Optuna's stored form (see :meth:`config_value`)."""
        if self.kind in ("choice", "ratio"):
            return trial.suggest_categorical(self.name, [_stored(v) for v in self.choices])
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def config_value(self, stored: Any, chosen: dict[str, Any]) -> Any:
        """The config value for Optuna's ``stored`` value; ``chosen``: the config values already set (for ratios)."""
        if self.kind == "choice":
            return _loaded(stored)
        if self.kind == "ratio":
            value = stored * chosen[self.ratio_of]
            return int(value) if float(value).is_integer() else value
        return stored


def _stored(value: Any) -> Any:
    """Optuna stores None/bool/int/float/str; a list or mapping choice is stored as its JSON text."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else json.dumps(value)


def _loaded(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "[{":
        return json.loads(value)
    return value


@dataclass(frozen=True)
class SearchSpace:
    """The parameters of a sweep, in the order ratios need (a ratio after the key it multiplies)."""

    params: tuple[Param, ...]

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """``{config key: value}`` for this trial (each value as the training config takes it)."""
        chosen: dict[str, Any] = {}
        for param in self.params:
            chosen[param.key] = param.config_value(param.suggest(trial), chosen)
        return chosen

    def values_of(self, stored: dict[str, Any]) -> dict[str, Any]:
        """Config values from a finished trial's ``params`` (Optuna names → stored values)."""
        chosen: dict[str, Any] = {}
        for param in self.params:
            if param.name in stored:
                chosen[param.key] = param.config_value(stored[param.name], chosen)
        return chosen

    @property
    def finite(self) -> bool:
        return all(p.finite for p in self.params)

    def grid(self) -> list[dict[str, Any]]:
        """Every combination as Optuna parameters (``{name: stored value}``), in a fixed order."""
        names = [p.name for p in self.params]
        return [dict(zip(names, combo)) for combo in itertools.product(*(p.grid() for p in self.params))]


def parse_space(raw: Any, base: dict[str, Any], where: str) -> SearchSpace:
    """Read and check a ``space:`` mapping against the training config ``base`` (a dict of the config file)."""
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(
            f"{where}: 'space' must be a non-empty mapping of config keys to choices or ranges, "
            "e.g. space: {lora.r: [4, 8, 16]}"
        )
    params = [_parse_param(str(key), spec, where) for key, spec in raw.items()]
    keys = {p.key for p in params}
    ordered = [p for p in params if p.kind != "ratio"]
    for param in params:
        if param.kind == "ratio":
            if param.ratio_of not in keys:
                raise ConfigError(
                    f"{where}: space key {param.key!r}: ratio_of {param.ratio_of!r} must itself be a "
                    f"searched key (otherwise write the values of {param.key!r} as choices)"
                )
            if any(p.key == param.ratio_of and p.kind == "ratio" for p in params):
                raise ConfigError(f"{where}: space key {param.key!r}: ratio_of {param.ratio_of!r} is itself a ratio")
            ordered.append(param)
    space = SearchSpace(tuple(ordered))
    _check_values(space, base, where)
    return space


def _parse_param(key: str, spec: Any, where: str) -> Param:
    _check_key(key, where)
    at = f"{where}: space key {key!r}"
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(f"{at}: empty list of choices; give at least one value")
        return Param(key, "choice", choices=tuple(spec))
    if not isinstance(spec, dict):
        raise ConfigError(f"{at}: expected a list of choices, {{low, high}} or {{ratio_of, values}}, got {spec!r}")
    if "ratio_of" in spec:
        unknown = sorted(set(spec) - _RATIO_KEYS)
        values = spec.get("values")
        if unknown:
            raise ConfigError(f"{at}: unknown field {unknown[0]!r}; a ratio has ratio_of and values")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{at}: 'values' must be a non-empty list of numbers")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in values):
            raise ConfigError(f"{at}: ratio values must be positive numbers, got {values!r}")
        _check_key(str(spec["ratio_of"]), where)
        return Param(key, "ratio", choices=tuple(values), ratio_of=str(spec["ratio_of"]))
    unknown = sorted(set(spec) - _RANGE_KEYS)
    if unknown:
        raise ConfigError(f"{at}: unknown field {unknown[0]!r}; a range has low, high, log, step")
    low, high, step, log = spec.get("low"), spec.get("high"), spec.get("step"), spec.get("log", False)
    for name, value in (("low", low), ("high", high)):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(f"{at}: '{name}' must be a number, got {value!r}")
    if low > high:
        raise ConfigError(f"{at}: low {low} > high {high}")
    if not isinstance(log, bool):
        raise ConfigError(f"{at}: 'log' must be true or false, got {log!r}")
    if log and low <= 0:
        raise ConfigError(f"{at}: a log range needs low > 0, got {low}")
    if step is not None and (not isinstance(step, (int, float)) or isinstance(step, bool) or step <= 0):
        raise ConfigError(f"{at}: 'step' must be a positive number, got {step!r}")
    if step is not None and log:
        raise ConfigError(f"{at}: give 'step' or 'log', not both")
    is_int = all(isinstance(v, int) for v in (low, high)) and (step is None or isinstance(step, int))
    return Param(key, "int" if is_int else "float", low=low, high=high, log=log, step=step)


def _check_key(key: str, where: str) -> None:
    """The key must name a field of the training config (``lora.<LoraConfig field>`` or ``section.field``)."""
    parts = key.split(".")
    valid = sorted([f"lora.{f.name}" for f in dataclasses.fields(LoraConfig)] + _config_keys(RunConfig, ""))
    if key not in valid:
        close = [v for v in valid if v.split(".")[-1] == parts[-1]] or [
            v for v in valid if v.startswith(parts[0] + ".")
        ]
        hint = f"; did you mean {close[0]!r}?" if close else "; keys look like lora.r, train.lr, data.max_length"
        raise ConfigError(f"{where}: space key {key!r} is not a training config key{hint}")


def _config_keys(model: type[BaseModel], prefix: str) -> list[str]:
    keys = []
    for name, info in model.model_fields.items():
        if name == "lora" or name in _FIXED_KEYS:
            continue
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys += _config_keys(annotation, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def apply(base: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of the config dict ``base`` with the dotted ``values`` set."""
    config = json.loads(json.dumps(base))
    for key, value in values.items():
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return config


def _check_values(space: SearchSpace, base: dict[str, Any], where: str) -> None:
    """Every choice (and both ends of every range) must be a value the training config accepts."""
    for param in space.params:
        if param.kind == "ratio":
            continue
        samples = [
            _loaded(v)
            for v in ([_stored(c) for c in param.choices] if param.kind == "choice" else [param.low, param.high])
        ]
        for value in samples:
            try:
                load_config(apply(base, {param.key: value}))
            except ConfigError as err:
                reason = str(err).removeprefix("<config>: ")
                raise ConfigError(f"{where}: space key {param.key!r}: value {value!r} is refused: {reason}") from None
