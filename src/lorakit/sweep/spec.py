"""The sweep file: a training config, a search space, objectives, a budget, a sampler, where the study lives.

::

    name: triage                     # study name (default: the file's stem); registry name of every trial's adapter
    config: train.yaml               # the training config every trial starts from (a path or an inline mapping)
    eval:
      data: data/val.jsonl           # rows scored after training (default: the config's data.eval)
      task: {max_new_tokens: 40}     # a task spec (lorakit eval's): a YAML path or an inline mapping
      drift_prompts: null            # JSONL of {"prompt"} for drift (default: lorakit's general prompts)
    space: {lora.r: [2, 4, 8, 16], lora.targets: [attention, all-linear]}   # see lorakit.sweep.space
    objectives: {json_exact_match: maximize, drift_kl: minimize}
    sampler: grid                    # grid | random | tpe | nsga2 (default: tpe, nsga2 for several objectives)
    seed: 0
    budget: {trials: 8, minutes: 120}
    pruner: {startup_trials: 2, warmup_steps: 0}    # median pruner on eval loss; `pruner: none` turns it off
    heartbeat: {interval: 10, grace: 30}            # seconds; a trial silent for `grace` is failed and re-run
    storage: null                    # default sqlite:///OUTPUT/study.db; postgresql://… for many workers
    registry: null                   # default: $LORAKIT_REGISTRY, else the registry in LORAKIT_HOME
    promote: staging                 # the best trial (the Pareto set for several objectives); `none`: no promotion
    output: runs/sweep-triage        # trials/NNNN/ (each a training run), results.csv, pareto.png, report.html

Relative paths are relative to the current directory, as for ``lorakit train``. Objective names: ``eval_loss``
(the trainer's best eval loss), ``train_loss``, ``drift_kl``, ``adapter_mb``, ``adapter_params`` and every score
the task's metrics produce (``json_exact_match``, ``field_accuracy.<field>``, ``exact_match``, ``rouge_l``, …).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorakit.core.errors import ConfigError
from lorakit.core.files.strict_yaml import parse_yaml, read_yaml
from lorakit.eval.data import EvalRow, load_rows
from lorakit.eval.spec import TaskSpec, load_spec
from lorakit.eval.task import plan_task
from lorakit.sweep.space import SearchSpace, apply, parse_space
from lorakit.train.config import RunConfig, load_config

SAMPLERS = ("grid", "random", "tpe", "nsga2")
DIRECTIONS = ("maximize", "minimize")
TRIAL_METRICS = ("eval_loss", "train_loss", "drift_kl", "adapter_mb", "adapter_params")
_KEYS = {
    "name",
    "config",
    "eval",
    "space",
    "objectives",
    "sampler",
    "seed",
    "budget",
    "pruner",
    "heartbeat",
    "storage",
    "registry",
    "promote",
    "output",
}
_SWEEP_KEYS = "config, space, objectives, budget, …"
_DOTTED = ("space", "objectives")
_SCORES = {
    "exact_match": ["exact_match"],
    "normalized_match": ["normalized_match"],
    "token_f1": ["token_f1"],
    "rouge_l": ["rouge_l"],
    "json": ["json_valid", "json_exact_match"],
    "schema": ["schema_compliance"],
    "regex": ["regex_compliance"],
    "choice": ["choice_accuracy"],
    "perplexity": ["reference_loss", "reference_perplexity"],
}


@dataclass
class SweepSpec:
    """A validated sweep file; see the module docstring for each field."""

    name: str
    config: dict[str, Any]
    space: SearchSpace
    objectives: dict[str, str]
    eval_rows: list[EvalRow]
    eval_data: str
    task: TaskSpec
    drift_prompts: str | None = None
    sampler: str = "tpe"
    seed: int = 0
    trials: int | None = None
    minutes: float | None = None
    pruner: dict[str, int] | None = field(default_factory=lambda: {"startup_trials": 2, "warmup_steps": 0})
    heartbeat: dict[str, int] = field(default_factory=lambda: {"interval": 10, "grace": 30})
    storage: str = ""
    registry: str | None = None
    promote: str | None = "staging"
    output: Path = Path("runs/sweep")

    @property
    def directions(self) -> list[str]:
        return list(self.objectives.values())

    def trial_config(self, values: dict[str, Any], output: Path) -> RunConfig:
        """The training config of one trial: the base config with ``values`` set and its own output directory."""
        return load_config({**apply(self.config, values), "output": str(output)})


def load_sweep(source: str | Path | dict[str, Any], overrides: list[str] = ()) -> SweepSpec:
    """Read a sweep YAML (or a dict), apply ``key=value`` overrides (``config.train.max_steps=4``,
    ``budget.trials=2``), and check everything a trial will need before any model loads.

    Raises :class:`ConfigError` naming the file and the key for any unknown key, bad value or bad search space.
    """
    if isinstance(source, dict):
        raw, where, stem = copy.deepcopy(source), "<sweep>", "sweep"
    else:
        raw, where, stem = read_yaml(source, "sweep file", _SWEEP_KEYS), str(source), Path(source).stem
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(_KEYS))}")
    raw["config"] = _mapping(raw.get("config"), where, "config")
    evaluation = _section(raw, "eval", where)
    if isinstance(evaluation.get("task"), str):
        evaluation["task"] = load_spec(evaluation["task"])
    for override in overrides:
        _override(raw, override)
    name = _name(str(raw.get("name") or stem), where)
    try:
        base = load_config(raw["config"])
    except ConfigError as err:
        raise ConfigError(f"{where}: config: {str(err).removeprefix('<config>: ')}") from None
    config = base.resolved()
    config.pop("output")
    space = parse_space(raw.get("space"), config, where)
    task = _task(evaluation.get("task"), where)
    eval_data = evaluation.get("data") or base.data.eval
    if not eval_data:
        raise ConfigError(f"{where}: eval.data: no evaluation rows; set eval.data or the config's data.eval")
    rows = load_rows(eval_data)
    objectives = _objectives(raw.get("objectives"), rows, task, where)
    budget = _section(raw, "budget", where)
    spec = SweepSpec(
        name=name,
        config=config,
        space=space,
        objectives=objectives,
        eval_rows=rows,
        eval_data=str(eval_data),
        task=task,
        drift_prompts=evaluation.get("drift_prompts"),
        seed=_integer(raw.get("seed", 0), where, "seed", low=0),
        trials=_integer(budget.get("trials"), where, "budget.trials") if budget.get("trials") is not None else None,
        minutes=_positive(budget.get("minutes"), where, "budget.minutes"),
        registry=raw.get("registry"),
        output=Path(raw.get("output") or f"runs/sweep-{name}"),
    )
    spec.sampler = _sampler(raw.get("sampler"), spec, where)
    spec.pruner = _pruner(raw.get("pruner", spec.pruner), where)
    spec.heartbeat = _heartbeat(raw.get("heartbeat", spec.heartbeat), where)
    spec.promote = _promote(raw.get("promote", "staging"), where)
    spec.storage = _storage(raw.get("storage"), spec.output)
    if spec.sampler == "grid":
        size = len(spec.space.grid())
        spec.trials = min(spec.trials or size, size)
    elif spec.trials is None and spec.minutes is None:
        raise ConfigError(
            f"{where}: budget: give trials and/or minutes (the {spec.sampler} sampler has no end of its own)"
        )
    return spec


def _name(name: str, where: str) -> str:
    from lorakit.core.errors import RegistryError
    from lorakit.registry.refs import check_name

    try:
        return check_name(name)
    except RegistryError as err:
        raise ConfigError(
            f"{where}: name: {err} (it names the study and every trial's adapter in the registry)"
        ) from None


def _mapping(value: Any, where: str, key: str) -> dict[str, Any]:
    """A mapping given inline, or read from the YAML file a string names."""
    if isinstance(value, str):
        if Path(value).suffix not in (".yaml", ".yml"):
            raise ConfigError(f"{where}: '{key}': {value!r} is not a .yaml file")
        return read_yaml(value, "config file")
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: '{key}' must be a training config: a YAML path or an inline mapping")
    return value


def _section(raw: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    if raw.get(key) is None:
        raw[key] = {}
    value = raw[key]
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: '{key}' must be a mapping, got {value!r}")
    return value


def _override(raw: dict[str, Any], override: str) -> None:
    """``budget.trials=2`` sets ``raw["budget"]["trials"]``, ``space.lora.r=[4, 8]`` sets ``raw["space"]["lora.r"]``;
    the value is read as strict YAML (errors name ``--set space.lora.r``)."""
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {override!r}: expected key=value, e.g. --set config.train.max_steps=4")
    *parents, leaf = key.strip().split(".")
    if parents and parents[0] in _DOTTED:  # their own keys hold dots: space.lora.r=[4, 8]
        parents, leaf = parents[:1], key.strip().split(".", 1)[1]
    node = raw
    for part in parents:
        child = node.setdefault(part, {})
        if isinstance(child, TaskSpec):
            child = node[part] = child.to_dict()
        if not isinstance(child, dict):
            raise ConfigError(f"--set {override!r}: {part!r} is not a section")
        node = child
    node[leaf] = parse_yaml(text, f"--set {key.strip()}")


def _task(value: Any, where: str) -> TaskSpec:
    if value is None or isinstance(value, TaskSpec):
        return value or TaskSpec()
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: eval.task must be a task spec YAML path or a mapping")
    try:
        return TaskSpec(**value)
    except TypeError as err:
        raise ConfigError(f"{where}: eval.task: {err}") from None
    except ConfigError as err:
        raise ConfigError(f"{where}: eval.task: {err}") from None


def _objectives(value: Any, rows: list[EvalRow], task: TaskSpec, where: str) -> dict[str, str]:
    value = {"eval_loss": "minimize"} if value is None else value
    if not isinstance(value, dict) or not value:
        raise ConfigError(
            f"{where}: objectives must map metric names to maximize/minimize, e.g. "
            "{json_exact_match: maximize, drift_kl: minimize}"
        )
    plan = plan_task(rows, task)
    known = [*TRIAL_METRICS, *(s for m in plan.metrics for s in _SCORES[m])]
    if "json" in plan.metrics:
        known += [f"field_accuracy.{f}" for f in plan.fields]
    for metric, direction in value.items():
        if metric not in known:
            raise ConfigError(f"{where}: objectives: unknown metric {metric!r}; this eval gives {', '.join(known)}")
        if direction not in DIRECTIONS:
            raise ConfigError(f"{where}: objectives: {metric!r} must be maximize or minimize, got {direction!r}")
    return dict(value)


def _sampler(value: Any, spec: SweepSpec, where: str) -> str:
    chosen = value or ("nsga2" if len(spec.objectives) > 1 else "tpe")
    if chosen not in SAMPLERS:
        raise ConfigError(f"{where}: sampler {chosen!r} unknown; choose from {', '.join(SAMPLERS)}")
    if chosen == "grid" and not spec.space.finite:
        loose = next(p.key for p in spec.space.params if not p.finite)
        raise ConfigError(
            f"{where}: space key {loose!r}: the grid sampler needs a finite range; give it a 'step' "
            "or a list of choices"
        )
    return chosen


def _pruner(value: Any, where: str) -> dict[str, int] | None:
    if value in (None, "none", False):
        return None
    if not isinstance(value, dict) or set(value) - {"startup_trials", "warmup_steps"}:
        raise ConfigError(f"{where}: pruner must be 'none' or {{startup_trials, warmup_steps}}, got {value!r}")
    return {
        "startup_trials": _integer(value.get("startup_trials", 2), where, "pruner.startup_trials", low=0),
        "warmup_steps": _integer(value.get("warmup_steps", 0), where, "pruner.warmup_steps", low=0),
    }


def _heartbeat(value: Any, where: str) -> dict[str, int]:
    if not isinstance(value, dict) or set(value) - {"interval", "grace"}:
        raise ConfigError(f"{where}: heartbeat must be {{interval, grace}} in seconds, got {value!r}")
    interval = _integer(value.get("interval", 10), where, "heartbeat.interval")
    grace = _integer(value.get("grace", 3 * interval), where, "heartbeat.grace")
    if grace <= interval:
        raise ConfigError(f"{where}: heartbeat.grace ({grace} s) must be longer than heartbeat.interval ({interval} s)")
    return {"interval": interval, "grace": grace}


def _promote(value: Any, where: str) -> str | None:
    if value in (None, "none", False):
        return None
    if value not in ("staging", "production"):
        raise ConfigError(f"{where}: promote must be staging, production or none, got {value!r}")
    return value


def _storage(value: Any, output: Path) -> str:
    """A SQLAlchemy URL: a SQLite file (a plain path, or the default ``OUTPUT/study.db``) or PostgreSQL through
    psycopg 3 (``postgresql://`` and ``postgres://`` name it, as for the registry)."""
    if not value:
        return f"sqlite:///{(output / 'study.db').resolve()}"
    text = str(value)
    scheme, sep, rest = text.partition("://")
    if not sep:
        return f"sqlite:///{Path(text).expanduser().resolve()}"
    if scheme in ("postgresql", "postgres"):
        return f"postgresql+psycopg://{rest}"
    if scheme.split("+")[0] not in ("sqlite", "postgresql"):
        raise ConfigError(f"storage {scheme}://…: the study lives in a SQLite file or PostgreSQL (postgresql://…)")
    return text


def _integer(value: Any, where: str, key: str, low: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{where}: {key} must be an integer ≥ {low}, got {value!r}")
    return value


def _positive(value: Any, where: str, key: str) -> float | None:
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{where}: {key} must be a positive number of minutes, got {value!r}")
    return float(value)
