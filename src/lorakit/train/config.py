"""The training config: a YAML file validated by pydantic, with ``--set key=value`` overrides.

Every field is documented where it is declared. Scalars are strict (``batch_size: true`` or ``lr: "1e-4"`` is
refused, not converted). Hugging Face's and PEFT's names are accepted as aliases (:data:`ALIASES`:
``train.learning_rate``, ``lora.lora_alpha``…). Every unknown key and bad value is reported at once in one
:class:`~lorakit.core.errors.ConfigError` naming the file and each key (``train.lr``), with "did you mean".
The file and every ``--set`` value are read strictly by :mod:`lorakit.core.files.strict_yaml` (duplicate keys,
bounded aliases).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lorakit.core.bases import DEFAULT_BASE
from lorakit.core.config import ALIASES as LORA_ALIASES
from lorakit.core.config import LoraConfig
from lorakit.core.errors import ConfigError
from lorakit.core.files.strict_yaml import parse_yaml, read_yaml
from lorakit.core.names import did_you_mean, rename_aliases
from lorakit.train.adalora import AdaLoraSection
from lorakit.train.objective_config import DpoSection, DriftGuardSection

ALIASES: dict[str, dict[str, str]] = {
    "": {"model_name_or_path": "base", "base_model_name_or_path": "base", "output_dir": "output"},
    "data": {"max_seq_length": "max_length", "dataset_format": "format"},
    "train": {
        "learning_rate": "lr",
        "num_train_epochs": "num_epochs",
        "per_device_train_batch_size": "batch_size",
        "gradient_accumulation_steps": "grad_accum",
        "lr_scheduler_type": "schedule",
        "save_steps": "save_every",
        "eval_steps": "eval_every",
        "logging_steps": "log_every",
        "save_total_limit": "keep_checkpoints",
        "optimizer": "optim",
    },
}
"""Hugging Face ``TrainingArguments``/TRL names accepted per section (``""``: top level); ``lora`` takes PEFT's
names (:data:`lorakit.core.config.ALIASES`)."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)


class DataSection(_Section):
    train: str | None = None
    """Training rows: a .jsonl, .csv or .parquet path (the Python API also takes a ``datasets.Dataset``)."""
    eval: str | None = None
    """Evaluation rows in the same format; or use ``eval_fraction``."""
    eval_fraction: float | None = Field(None, gt=0, lt=1)
    """Hold out this fraction of the training rows (chosen with ``train.seed``) for evaluation."""
    format: Literal["chat", "instruction", "completion"] | None = None
    """Row format: chat ``{"messages"}``, instruction ``{"instruction","input","output"}``, completion
    ``{"prompt","completion"}``; ``null``: detected from the rows' keys (an error when it is ambiguous)."""
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


DEFAULT_MAX_STEPS = 200


class TrainSection(_Section):
    max_steps: int | None = Field(None, ge=1)
    """Optimizer steps (200 when neither this nor ``num_epochs`` is given)."""
    num_epochs: float | None = Field(None, gt=0)
    """Instead of ``max_steps``: passes over the training rows; the run resolves it to
    ``ceil(num_epochs × rows / (batch_size × grad_accum × processes))`` steps (see :meth:`steps_for`)."""
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

    @model_validator(mode="before")
    @classmethod
    def _steps_or_epochs(cls, values: Any) -> Any:
        if not isinstance(values, dict):
            return values
        if values.get("max_steps") is not None and values.get("num_epochs") is not None:
            raise ValueError("give train.max_steps or train.num_epochs, not both")
        if values.get("max_steps") is None and values.get("num_epochs") is None:
            values = {**values, "max_steps": DEFAULT_MAX_STEPS}
        return values

    def steps_for(self, rows: int, world: int = 1) -> int:
        """Optimizer steps of this run over ``rows`` training sequences on ``world`` processes."""
        if self.max_steps is not None:
            return self.max_steps
        per_step = self.batch_size * self.grad_accum * world
        return max(1, math.ceil(self.num_epochs * rows / per_step))

    objective: Literal["sft", "dpo"] = "sft"
    """``sft``: next-token cross-entropy on responses; ``dpo``: preference pairs (``prompt``, ``chosen``,
    ``rejected``) with the base as reference, settings in the ``dpo:`` section."""


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
    lora: dict[str, Any] = Field(
        default_factory=lambda: {"r": 16, "alpha": 32, "dropout": 0.0, "targets": "all-linear"}
    )
    """LoraConfig fields (``r``, ``alpha``, ``dropout``, ``targets``, ...), see lorakit.core.config."""
    data: DataSection = Field(default_factory=DataSection)
    train: TrainSection = Field(default_factory=TrainSection)
    output: str = "runs/lorakit"
    """Run directory: checkpoints/, adapter/, best/, metrics.jsonl, loss.png, lorakit.json."""
    tracking: TrackingSection = Field(default_factory=TrackingSection)
    drift_guard: DriftGuardSection | None = None
    """Regularise toward the base's next-token distributions (weight, data, schedule, ...); ``null``: off."""
    dpo: DpoSection = Field(default_factory=DpoSection)
    """DPO settings (beta, label_smoothing, loss_type, precompute_reference), used when ``train.objective: dpo``."""

    @model_validator(mode="after")
    def _guard_fits_objective(self) -> "RunConfig":
        if self.train.objective == "dpo" and self.drift_guard is not None and self.drift_guard.batch_weight > 0:
            raise ValueError(
                "drift_guard.batch_weight works with train.objective: sft only (DPO already stays "
                "near the base through beta); set it to 0"
            )
        if self.train.objective == "dpo" and self.data.packing:
            raise ValueError(
                "data.packing cannot be used with train.objective: dpo (each pair is scored as two "
                "whole sequences); set data.packing: false"
            )
        return self

    @field_validator("lora")
    @classmethod
    def _valid_lora(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            LoraConfig.from_dict(value, "lora.")
            return rename_aliases(value, LORA_ALIASES, "lora.")
        except ConfigError as err:
            raise ValueError(str(err)) from None

    def lora_config(self) -> LoraConfig:
        return LoraConfig(**self.lora)

    def with_steps(self, rows: int, world: int = 1) -> "RunConfig":
        """This config with ``train.num_epochs`` resolved to ``train.max_steps`` for ``rows`` training sequences."""
        if self.train.max_steps is not None:
            return self
        train = self.train.model_dump() | {"max_steps": self.train.steps_for(rows, world), "num_epochs": None}
        return self.model_copy(update={"train": TrainSection.model_validate(train)})

    def resolved(self) -> dict[str, Any]:
        """The full config with every default filled in (recorded in checkpoints and provenance)."""
        return self.model_dump(mode="json")


def load_config(source: str | Path | dict[str, Any] | RunConfig, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML file (or take a dict), rename aliases, apply ``key=value`` overrides, validate.

    Raises:
        ConfigError: the file cannot be read or parsed (see :mod:`lorakit.core.files.strict_yaml`), or keys and values
            are invalid — all of them named in one message, each with its file and dotted key.
    """
    if isinstance(source, RunConfig):
        raw, where = source.model_dump(), "<config>"
    elif isinstance(source, dict):
        raw, where = dict(source), "<config>"
    else:
        raw, where = read_yaml(Path(source), "config file", keys="base, lora, data, train, output"), str(source)
    try:
        raw = _canonical(raw)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    for override in overrides or []:
        _apply_override(raw, override)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"{where}: {_describe(err)}") from None


def _section_aliases(section: str) -> dict[str, str]:
    return LORA_ALIASES if section == "lora" else ALIASES.get(section, {})


def _canonical(raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with aliases renamed to lorakit's names, at the top level and in each section."""
    out = rename_aliases(raw, ALIASES[""])
    for section, value in out.items():
        if isinstance(value, dict) and _section_aliases(section):
            out[section] = rename_aliases(value, _section_aliases(section), f"{section}.")
    return out


def _apply_override(raw: dict[str, Any], override: str) -> None:
    """``train.lr=1e-4`` sets ``raw["train"]["lr"]``; the value is read as strict YAML (numbers,
    booleans, lists; a duplicate key or invalid YAML is a :class:`ConfigError` naming ``--set train.lr``)."""
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {override!r}: expected key=value, e.g. --set train.lr=1e-4")
    parts = key.strip().split(".")
    parts[-1] = _section_aliases(".".join(parts[:-1])).get(parts[-1], parts[-1])
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {override!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = parse_yaml(text, f"--set {key.strip()}")


def _describe(err: ValidationError) -> str:
    """Every problem of ``err`` in one line: unknown keys grouped by section (with "did you mean"), then bad values."""
    unknown: dict[tuple, list[str]] = {}
    problems = []
    for item in err.errors():
        loc = tuple(str(p) for p in item["loc"])
        if item["type"] == "extra_forbidden":
            unknown.setdefault(loc[:-1], []).append(loc[-1])
            continue
        key = ".".join(loc) or "config"
        message = item["msg"].removeprefix("Value error, ")
        got = f", got {item['input']!r}" if item["type"] not in ("value_error", "missing") else ""
        problems.append(f"{key}: {message}{got}")
    for loc, keys in unknown.items():
        valid = list(_section_model(loc).model_fields) if _section_model(loc) else []
        prefix = "".join(f"{part}." for part in loc)
        names = ", ".join(f"{prefix}{key}{did_you_mean(key, valid)}" for key in keys)
        place = f" in {'.'.join(loc)}" if loc else ""
        problems.insert(0, f"unknown key{'s' if len(keys) > 1 else ''} {names}; valid keys{place}: {', '.join(valid)}")
    return "; ".join(problems)


def _section_model(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] = RunConfig
    for part in loc:
        field = model.model_fields.get(str(part))
        candidates = (field.annotation, *get_args(field.annotation)) if field is not None else ()
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return None
    return model
