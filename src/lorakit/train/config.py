"""The training config: a YAML file validated by pydantic, with ``--set key=value`` overrides.

Every field is documented where it is declared. An unknown key or a bad value is a
:class:`~lorakit.errors.ConfigError` naming the key (``train.lr``), what was wrong and the file.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lorakit.bases import DEFAULT_BASE
from lorakit.config import LoraConfig
from lorakit.errors import ConfigError
from lorakit.train.adalora import AdaLoraSection

_LORA_FIELDS = {f.name for f in dataclasses.fields(LoraConfig)}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataSection(_Section):
    train: str | None = None
    """Training rows: a .jsonl, .csv or .parquet path (the Python API also takes a ``datasets.Dataset``)."""
    eval: str | None = None
    """Evaluation rows in the same format; or use ``eval_fraction``."""
    eval_fraction: float | None = Field(None, gt=0, lt=1)
    """Hold out this fraction of the training rows (chosen with ``train.seed``) for evaluation."""
    format: Literal["chat", "instruction", "completion"] = "chat"
    """Row format: chat ``{"messages"}``, instruction ``{"instruction","input","output"}``, completion ``{"prompt","completion"}``."""
    max_length: int = Field(512, ge=8)
    """Tokens per example (per pack with ``packing``); longer examples are cut and counted."""
    train_on_prompt: bool = False
    """Also train on prompt tokens; by default only responses carry loss."""
    packing: bool = False
    """Concatenate whole examples up to ``max_length`` tokens per sequence."""
    skip_bad_lines: bool = False
    """Skip (and count) rows that are malformed instead of stopping at the first."""

    @model_validator(mode="after")
    def _one_eval_source(self) -> "DataSection":
        if self.eval is not None and self.eval_fraction is not None:
            raise ValueError("give data.eval or data.eval_fraction, not both")
        return self


class TrainSection(_Section):
    max_steps: int = Field(200, ge=1)
    """Optimizer steps."""
    batch_size: int = Field(8, ge=1)
    """Examples per micro-batch per process; the global batch is batch_size × grad_accum × processes."""
    grad_accum: int = Field(1, ge=1)
    """Micro-batches whose gradients add up before each optimizer step."""
    lr: float = Field(2e-4, gt=0)
    """Peak learning rate of AdamW."""
    loraplus_ratio: float | None = Field(None, ge=1)
    """LoRA+: the B matrices learn at ``loraplus_ratio × lr`` (16 is the paper's default)."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW weight decay on adapter matrices (never on vectors such as biases)."""
    optim: Literal["adamw", "adamw_8bit", "paged_adamw_8bit"] = "adamw"
    """``adamw_8bit``: bitsandbytes' 8-bit moments; ``paged_adamw_8bit`` also pages them (CUDA only)."""
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    """Fraction of ``max_steps`` spent warming the learning rate up linearly."""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """Learning-rate decay after warm-up."""
    max_grad_norm: float | None = Field(1.0, gt=0)
    """Clip the global gradient norm to this value (``null``: no clipping)."""
    seed: int = 0
    """Seeds the adapter init, the data order and dropout."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """``auto``: bf16 autocast where this device runs it fast, fp32 otherwise. Weights stay fp32 either way."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward: less memory, about a third more time."""
    eval_every: int | None = Field(50, ge=1)
    """Evaluate every N steps (and at the end) when there is evaluation data."""
    save_every: int | None = Field(50, ge=1)
    """Write a checkpoint every N steps (and at the end)."""
    keep_checkpoints: int = Field(3, ge=1)
    """How many recent checkpoints to keep; the best adapter by eval loss is kept in ``best/`` too."""
    early_stopping_patience: int | None = Field(None, ge=1)
    """Stop after this many evaluations without a better eval loss."""
    log_every: int = Field(1, ge=1)
    """Append a line to metrics.jsonl every N steps."""


class TrackingSection(_Section):
    mlflow: str | None = None
    """MLflow tracking URI (``file:./mlruns``, ``http://host:5000``, a database URL); ``null`` disables it."""
    experiment: str = "lorakit"
    """MLflow experiment name."""
    run_name: str | None = None
    """MLflow run name (default: the output directory's name)."""


class RunConfig(_Section):
    """A whole training run: base model, adapter, data, optimisation, output directory and tracking."""

    base: str = DEFAULT_BASE
    """Base model: the embedded default's name or a local transformers directory."""
    quantize: Literal["nf4", "int8"] | None = None
    """QLoRA: hold the base's linear layers in 4-bit NF4 (double-quantised) or LLM.int8; adapters stay float."""
    adalora: AdaLoraSection | None = None
    """AdaLoRA rank budget (init_r, target_r, tinit, tfinal, delta_t, ...); the adapter is saved as plain LoRA."""
    lora: dict[str, Any] = Field(default_factory=lambda: {"r": 16, "alpha": 32, "dropout": 0.0, "targets": "all-linear"})
    """LoraConfig fields (``r``, ``alpha``, ``dropout``, ``targets``, ...), see lorakit.config."""
    data: DataSection = Field(default_factory=DataSection)
    train: TrainSection = Field(default_factory=TrainSection)
    output: str = "runs/lorakit"
    """Run directory: checkpoints/, adapter/, best/, metrics.jsonl, loss.png, lorakit.json."""
    tracking: TrackingSection = Field(default_factory=TrackingSection)

    @field_validator("lora")
    @classmethod
    def _valid_lora(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - _LORA_FIELDS)
        if unknown:
            raise ValueError(f"unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(_LORA_FIELDS))}")
        try:
            LoraConfig(**value)
        except ConfigError as err:
            raise ValueError(str(err)) from None
        return value

    def lora_config(self) -> LoraConfig:
        return LoraConfig(**self.lora)

    def resolved(self) -> dict[str, Any]:
        """The full config with every default filled in (recorded in checkpoints and provenance)."""
        return self.model_dump(mode="json")


def load_config(source: str | Path | dict[str, Any] | RunConfig, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML file (or take a dict), apply ``key=value`` overrides, validate. Errors name the key and file."""
    if isinstance(source, RunConfig):
        raw, where = source.model_dump(), "<config>"
    elif isinstance(source, dict):
        raw, where = dict(source), "<config>"
    else:
        raw, where = _read_yaml(Path(source)), str(source)
    for override in overrides or []:
        _apply_override(raw, override)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"{where}: {_describe(err)}") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{line}: invalid YAML ({getattr(err, 'problem', None) or err})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the config must be a mapping of keys (base, lora, data, train, output), got {type(raw).__name__}")
    return raw


def _apply_override(raw: dict[str, Any], override: str) -> None:
    """``train.lr=1e-4`` sets ``raw["train"]["lr"]``; the value is parsed as YAML (numbers, booleans, lists)."""
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {override!r}: expected key=value, e.g. --set train.lr=1e-4")
    parts = key.strip().split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {override!r}: {part!r} is not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        node[parts[-1]] = text


def _describe(err: ValidationError) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "config"
    if first["type"] == "extra_forbidden":
        section = _section_model(first["loc"][:-1])
        valid = ", ".join(section.model_fields) if section else ""
        return f"{key}: unknown key; valid keys here: {valid}"
    message = first["msg"].removeprefix("Value error, ")
    more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    got = f", got {first['input']!r}" if first["type"] not in ("value_error", "missing") else ""
    return f"{key}: {message}{got}{more}"


def _section_model(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] = RunConfig
    for part in loc:
        annotation = model.model_fields.get(str(part))
        if annotation is None or not isinstance(annotation.annotation, type) or not issubclass(annotation.annotation, BaseModel):
            return None
        model = annotation.annotation
    return model
