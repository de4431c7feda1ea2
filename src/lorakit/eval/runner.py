"""``evaluate``: the base and each adapter on the user's data and the general sets, in one loaded model.

The base is loaded once; adapters are loaded beside it under their names and switched with ``set_active``;
the base column is computed inside ``lk.disabled``. Nothing is reloaded per adapter.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lorakit.core import bases
from lorakit.core.errors import ConfigError
from lorakit.core.files import load_adapter
from lorakit.core.model import active_adapters, adapter_names, disabled, set_active
from lorakit.eval.data import EvalRow, load_rows
from lorakit.eval.generate import generate
from lorakit.eval.regression import (
    RegressionScores,
    RegressionSet,
    Thresholds,
    gate_failures,
    load_regression_set,
    parse_thresholds,
    regression_scores,
)
from lorakit.eval.report import EvalReport, sample_rows
from lorakit.eval.report_format import BASE
from lorakit.eval.spec import TaskSpec, load_spec
from lorakit.eval.task import plan_task, score_likelihoods, score_outputs


@contextlib.contextmanager
def _column(model: nn.Module, column: str) -> Iterator[None]:
    """Inside the block the model computes ``column``: the base (adapters disabled) or one adapter alone."""
    if column == BASE:
        with disabled(model):
            yield
        return
    previous = active_adapters(model)
    set_active(model, column)
    try:
        yield
    finally:
        set_active(model, previous)


def _load_model(base: str | tuple[nn.Module, Any], dtype: torch.dtype) -> tuple[nn.Module, Any, str]:
    if isinstance(base, tuple):
        model, tokenizer = base
        return model, tokenizer, str(getattr(getattr(model, "config", None), "name_or_path", "") or "model")
    model, tokenizer = bases.load(base, dtype=dtype)
    return model, tokenizer, base


def _attach_adapters(model: nn.Module, adapters: Mapping[str, str | Path] | Sequence[str]) -> dict[str, str]:
    """Load ``{name: source}`` beside the base, or check that the named adapters are on the model;
    returns name → source.
    """
    if isinstance(adapters, Mapping):
        for name, source in adapters.items():
            load_adapter(model, source, name=name)
        return {name: str(source) for name, source in adapters.items()}
    missing = [n for n in adapters if n not in adapter_names(model)]
    if missing:
        raise ConfigError(f"adapter {missing[0]!r} is not on the model; pass a mapping name → directory to load it")
    return {name: "on the model" for name in adapters}


def _regression_set(regression: RegressionSet | str | Path | None) -> RegressionSet | None:
    if regression is None or str(regression) == "none":
        return None
    return regression if isinstance(regression, RegressionSet) else load_regression_set(regression)


def evaluate(
    base: str | tuple[nn.Module, Any] = bases.DEFAULT_BASE,
    adapters: Mapping[str, str | Path] | Sequence[str] = (),
    data: str | Path | Sequence[EvalRow] | None = None,
    *,
    task: TaskSpec | str | Path | None = None,
    regression: RegressionSet | str | Path | None = "default",
    max_drift: Thresholds | str | None = None,
    dtype: torch.dtype = torch.float32,
    log: Callable[[str], None] | None = None,
) -> EvalReport:
    """Evaluate the base and every adapter on ``data`` (task metrics) and on the general sets (regression).

    ``base``: a model name or directory for :func:`lorakit.core.bases.load`, or a ``(model, tokenizer)`` pair.
    ``adapters``: ``{name: directory or registry:ref}`` loaded beside the base, or names already on the model.
    ``data``: an evaluation file (see :mod:`lorakit.eval.data`) or a list of :class:`EvalRow`.
    ``task``: a :class:`TaskSpec` or its YAML; ``regression``: ``"default"``, a regression YAML, a
    :class:`RegressionSet`, or ``None`` to skip. ``max_drift``: thresholds that fail adapters (``report.passed``).
    ``log`` receives one line per step (the CLI prints them to stderr). Data and spec are checked before any
    model is loaded.
    """
    log = log or (lambda _: None)
    started = time.perf_counter()
    spec = task if isinstance(task, TaskSpec) else load_spec(task) if task is not None else TaskSpec()
    if data is None:
        raise ConfigError("no evaluation data: give a data file or a list of rows")
    rows = load_rows(data) if isinstance(data, (str, Path)) else list(data)
    if not rows:
        raise ConfigError("no evaluation rows given")
    if BASE in adapters:
        raise ConfigError(f"an adapter may not be called {BASE!r}: that column is the base model")
    plan = plan_task(rows, spec)
    rset = _regression_set(regression)
    thresholds = parse_thresholds(max_drift) if isinstance(max_drift, str) else max_drift
    if thresholds is not None and rset is None:
        raise ConfigError("--max-drift needs the regression sets; do not combine it with --regression none")
    model, tokenizer, base_name = _load_model(base, dtype)
    sources = _attach_adapters(model, adapters)
    columns = [BASE, *sources]
    metrics: dict[str, dict[str, float]] = {}
    outputs: dict[str, list[str]] = {}
    general: dict[str, RegressionScores] = {}
    for column in columns:
        with _column(model, column):
            log(f"{column}: task metrics on {len(rows)} rows")
            if plan.generates:
                outputs[column] = generate(
                    model,
                    tokenizer,
                    [r.prompt for r in plan.generation_rows],
                    max_new_tokens=spec.max_new_tokens,
                    batch_size=spec.batch_size,
                    chat=plan.chat,
                )
            scores = {
                **(score_outputs(plan, spec, outputs[column]) if plan.generates else {}),
                **score_likelihoods(plan, spec, model, tokenizer),
            }
            for metric, value in scores.items():
                metrics.setdefault(metric, {})[column] = value
            if rset is not None:
                log(f"{column}: regression on the general sets")
                general[column] = regression_scores(
                    model, tokenizer, rset, kl=column != BASE, batch_size=spec.batch_size
                )
    failures = gate_failures(general[BASE], {c: general[c] for c in sources}, thresholds) if thresholds else []
    return EvalReport(
        base={"name": base_name, "fingerprint": bases.fingerprint(model)},
        data=str(data) if isinstance(data, (str, Path)) else f"{len(rows)} rows",
        columns=columns,
        adapters=sources,
        task={
            **spec.to_dict(),
            "metrics": plan.metrics,
            "fields": plan.fields,
            "chat": plan.chat,
            "generation_rows": len(plan.generation_rows),
            "choice_rows": len(plan.choice_rows),
        },
        metrics=metrics,
        regression=_regression_table(general, columns) if general else None,
        thresholds=thresholds.to_dict() if thresholds else None,
        failures=failures,
        samples=sample_rows(plan.generation_rows, outputs, spec.samples) if outputs else [],
        seconds=time.perf_counter() - started,
    )


def _regression_table(general: dict[str, RegressionScores], columns: list[str]) -> dict[str, dict[str, float]]:
    base = general[BASE]
    return {
        "kl": {c: general[c].kl for c in columns},
        "perplexity": {c: general[c].perplexity for c in columns},
        "perplexity_change": {c: general[c].perplexity / base.perplexity - 1 for c in columns},
        "mc_accuracy": {c: general[c].mc_accuracy for c in columns},
        "mc_accuracy_change": {c: general[c].mc_accuracy - base.mc_accuracy for c in columns},
    }
