"""How report metrics are named, compared and printed (shared by the terminal table and ``report.html``)."""

from __future__ import annotations

import math

BASE = "base"
LABELS = {
    "exact_match": "exact match",
    "normalized_match": "normalised match",
    "token_f1": "token F1",
    "rouge_l": "ROUGE-L F1",
    "json_valid": "valid JSON",
    "json_exact_match": "JSON exact match (all fields)",
    "schema_compliance": "schema compliance",
    "regex_compliance": "regex compliance",
    "choice_accuracy": "multiple-choice accuracy",
    "reference_loss": "reference loss (nats/token)",
    "reference_perplexity": "reference perplexity",
    "kl": "KL(base ‖ adapted) per token",
    "perplexity": "general-text perplexity",
    "perplexity_change": "perplexity change vs base",
    "mc_accuracy": "general multiple-choice accuracy",
    "mc_accuracy_change": "accuracy change vs base",
}
_LOWER_IS_BETTER = {"reference_loss", "reference_perplexity", "kl", "perplexity", "perplexity_change"}


def label(metric: str) -> str:
    if metric.startswith("field_accuracy."):
        return f"field '{metric.split('.', 1)[1]}' accuracy"
    return LABELS.get(metric, metric)


def best_columns(metric: str, values: dict[str, float]) -> set[str]:
    """The columns holding the best finite value of ``metric`` (several on a tie; none when all are equal)."""
    finite = {c: v for c, v in values.items() if v is not None and math.isfinite(v)}
    if len(set(finite.values())) < 2:
        return set()
    best = (min if metric in _LOWER_IS_BETTER else max)(finite.values())
    return {c for c, v in finite.items() if v == best}


def format_value(metric: str, value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    if metric == "perplexity_change":
        return f"{100 * value:+.2f}%"
    if metric == "mc_accuracy_change":
        return f"{value:+.3f}"
    if metric == "kl":
        return f"{value:.3g}" if value else "0"
    if metric in ("reference_perplexity", "perplexity"):
        return f"{value:.2f}"
    return f"{value:.3f}"
