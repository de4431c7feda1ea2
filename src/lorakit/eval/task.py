"""Task metrics for one model column: which metrics apply to the data, and their values from outputs and likelihoods."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from lorakit.core.errors import DataError
from lorakit.eval import metrics as m
from lorakit.eval.choice import choice_logprobs, predicted_choices
from lorakit.eval.data import EvalRow
from lorakit.eval.scoring import reference_likelihood
from lorakit.eval.spec import TEXT_DEFAULTS, TaskSpec

_TEXT_METRICS = ("exact_match", "normalized_match", "token_f1", "rouge_l")
_GENERATION_METRICS = ("exact_match", "normalized_match", "token_f1", "rouge_l", "json", "schema", "regex")
_NEEDS_REFERENCE = ("exact_match", "normalized_match", "token_f1", "rouge_l", "json", "perplexity")


@dataclass
class TaskPlan:
    """The metrics to compute and the rows they use: generation rows (with references) and multiple-choice rows."""

    metrics: list[str]
    fields: list[str]
    generation_rows: list[EvalRow]
    choice_rows: list[EvalRow]
    chat: bool = True
    json_references: list[dict] = field(default_factory=list)

    @property
    def generates(self) -> bool:
        return any(metric in self.metrics for metric in _GENERATION_METRICS)

    def reference_texts(self) -> list[str]:
        return [
            r.reference if isinstance(r.reference, str) else json.dumps(r.reference, ensure_ascii=False)
            for r in self.generation_rows
        ]


def _as_object(row: EvalRow) -> dict | None:
    if isinstance(row.reference, dict):
        return row.reference
    parsed = m.parse_json_output(row.reference) if isinstance(row.reference, str) else None
    return parsed if isinstance(parsed, dict) else None


def _default_metrics(spec: TaskSpec, generation_rows: list[EvalRow], choice_rows: list[EvalRow]) -> list[str]:
    chosen = ["choice"] if choice_rows else []
    if generation_rows:
        is_json = bool(spec.fields) or all(_as_object(r) is not None for r in generation_rows)
        chosen += ["json", "perplexity"] if is_json else list(TEXT_DEFAULTS)
        chosen += [name for name, given in (("schema", spec.schema), ("regex", spec.regex)) if given is not None]
    return chosen


def plan_task(rows: list[EvalRow], spec: TaskSpec) -> TaskPlan:
    """Decide the metrics (the spec's, or defaults from the data) and check every row has what they need."""
    choice_rows = [r for r in rows if r.choices is not None]
    generation_rows = [r for r in rows if r.choices is None]
    metrics = list(spec.metrics) if spec.metrics is not None else _default_metrics(spec, generation_rows, choice_rows)
    if "choice" in metrics and not choice_rows:
        raise DataError("the task spec asks for 'choice' but no data row has 'choices' and 'answer'")
    if any(x in metrics for x in _GENERATION_METRICS + ("perplexity",)) and not generation_rows:
        raise DataError(
            f"the task spec asks for {[x for x in metrics if x != 'choice']} but every data row is multiple choice"
        )
    needing = [x for x in metrics if x in _NEEDS_REFERENCE]
    for row in generation_rows:
        if needing and row.reference is None:
            raise DataError(
                f"{row.where}: no reference ('reference', 'completion', 'output', 'response' or a final "
                f"assistant message), which the metric {needing[0]!r} needs"
            )
    chat = spec.chat if spec.chat is not None else not all(r.plain for r in rows)
    plan = TaskPlan(
        metrics=metrics, fields=list(spec.fields), generation_rows=generation_rows, choice_rows=choice_rows, chat=chat
    )
    if "json" in metrics:
        plan.json_references = _json_references(generation_rows, plan)
    return plan


def _json_references(rows: list[EvalRow], plan: TaskPlan) -> list[dict]:
    references = []
    for row in rows:
        obj = _as_object(row)
        if obj is None:
            raise DataError(f"{row.where}: the reference is not a JSON object, but the task compares JSON fields")
        if not plan.fields:
            plan.fields = list(obj)
        missing = [f for f in plan.fields if f not in obj]
        if missing:
            raise DataError(
                f"{row.where}: the reference has no field {missing[0]!r} named by the task spec "
                f"(fields: {', '.join(plan.fields)})"
            )
        references.append(obj)
    if not plan.fields:
        raise DataError(
            f"{rows[0].where}: the reference JSON object has no fields to compare; name them in the task spec"
        )
    return references


def score_outputs(plan: TaskPlan, spec: TaskSpec, outputs: list[str]) -> dict[str, float]:
    """Metrics computed from generated ``outputs`` (one per generation row), each a mean over rows."""
    texts = plan.reference_texts() if any(x in plan.metrics for x in _TEXT_METRICS) else []
    scores: dict[str, float] = {}
    for name, fn in (
        ("exact_match", m.exact_match_scores),
        ("normalized_match", m.normalized_match_scores),
        ("token_f1", m.token_f1_scores),
        ("rouge_l", m.rouge_l_scores),
    ):
        if name in plan.metrics:
            scores[name] = m.mean(fn(outputs, texts))
    if "json" in plan.metrics:
        result = m.json_task_scores(outputs, plan.json_references, plan.fields)
        scores["json_valid"] = result["json_valid"]
        scores["json_exact_match"] = result["exact_match"]
        scores.update({f"field_accuracy.{f}": v for f, v in result["field_accuracy"].items()})
    if "schema" in plan.metrics:
        scores["schema_compliance"] = m.mean(m.schema_scores(outputs, spec.schema))
    if "regex" in plan.metrics:
        scores["regex_compliance"] = m.mean(m.regex_scores(outputs, spec.regex))
    return scores


def score_likelihoods(plan: TaskPlan, spec: TaskSpec, model: nn.Module, tokenizer) -> dict[str, Any]:
    """Metrics from the model's log-likelihoods: multiple-choice accuracy and the references' loss and perplexity."""
    scores: dict[str, Any] = {}
    if "choice" in plan.metrics:
        rows = plan.choice_rows
        picks = predicted_choices(
            choice_logprobs(
                model,
                tokenizer,
                [r.prompt for r in rows],
                [r.choices for r in rows],
                batch_size=spec.batch_size,
                chat=plan.chat,
            )
        )
        scores["choice_accuracy"] = m.mean([float(p == r.answer) for p, r in zip(picks, rows)])
    if "perplexity" in plan.metrics:
        rows = plan.generation_rows
        likelihood = reference_likelihood(
            model,
            tokenizer,
            [r.prompt for r in rows],
            plan.reference_texts(),
            batch_size=spec.batch_size,
            chat=plan.chat,
        )
        scores["reference_loss"] = likelihood.loss
        scores["reference_perplexity"] = likelihood.perplexity
    return scores
