"""Regression against the base: what an adapter may have broken outside its task, and the gate on it.

Three general sets, written for lorakit, ship in ``lorakit/resources/eval``: prompts (for KL drift), text
(for perplexity) and general-knowledge multiple choice (for accuracy). Each is JSONL: ``{"prompt": …}``,
``{"text": …}`` and ``{"question": …, "choices": […], "answer": i}``. A regression YAML replaces any of
them with the user's own files: ``prompts: my_prompts.jsonl``, ``text: …``, ``choices: …`` (paths relative
to the YAML; absent keys keep the shipped set).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from torch import nn

from lorakit.core.errors import ConfigError
from lorakit.core.files.strict_yaml import read_yaml
from lorakit.eval.choice import choice_accuracy
from lorakit.eval.data import EvalRow
from lorakit.eval.drift import drift_kl
from lorakit.eval.general_sets import general_choices, general_prompts, general_texts
from lorakit.eval.scoring import text_likelihood


@dataclass
class RegressionSet:
    """The three general sets one regression run uses."""

    prompts: list[str]
    texts: list[str]
    choices: list[EvalRow]


def load_regression_set(source: str | Path = "default") -> RegressionSet:
    """``"default"``: the shipped sets;
    otherwise a YAML naming replacement files for ``prompts``, ``text``, ``choices``, read strictly
    (:mod:`lorakit.core.files.strict_yaml`; errors are :class:`ConfigError` naming ``file:line``).
    """
    if str(source) == "default":
        return RegressionSet(general_prompts(), general_texts(), general_choices())
    path = Path(source)
    if not path.exists():
        raise ConfigError(
            f"{path}: regression file not found; give 'default', 'none' or a YAML naming prompts/text/choices files"
        )
    raw = read_yaml(path, "regression file", "prompts, text, choices")
    unknown = sorted(set(raw) - {"prompts", "text", "choices"})
    if unknown:
        raise ConfigError(
            f"{path}: unknown key {unknown[0]!r}; a regression file maps prompts, text and choices to JSONL files"
        )
    files = {key: path.parent / str(value) for key, value in raw.items()}
    return RegressionSet(
        general_prompts(files.get("prompts")), general_texts(files.get("text")), general_choices(files.get("choices"))
    )


@dataclass
class RegressionScores:
    """One column's general scores: drift from the base, perplexity on general text, multiple-choice accuracy."""

    kl: float
    perplexity: float
    mc_accuracy: float


def regression_scores(
    model: nn.Module, tokenizer, rset: RegressionSet, *, kl: bool = True, batch_size: int = 8
) -> RegressionScores:
    """General scores of the model as it is now (its active adapters, or the base inside ``lk.disabled``).

    ``kl=False`` skips the drift computation and reports 0 (the base column: the base does not drift from itself).
    """
    perplexity = text_likelihood(model, tokenizer, rset.texts, batch_size=batch_size).perplexity
    accuracy = choice_accuracy(
        model,
        tokenizer,
        [r.prompt for r in rset.choices],
        [r.choices for r in rset.choices],
        [r.answer for r in rset.choices],
        batch_size=batch_size,
    )
    drift = drift_kl(model, tokenizer, rset.prompts, batch_size=batch_size) if kl else 0.0
    return RegressionScores(kl=drift, perplexity=perplexity, mc_accuracy=accuracy)


@dataclass
class Thresholds:
    """The gate: an adapter fails when KL exceeds ``kl``, perplexity grows by more than the fraction ``ppl``
    (``ppl_adapter / ppl_base − 1``), or multiple-choice accuracy drops by more than ``mc`` (absolute)."""

    kl: float | None = None
    ppl: float | None = None
    mc: float | None = None

    def to_dict(self) -> dict[str, float | None]:
        return asdict(self)


def parse_thresholds(text: str) -> Thresholds:
    """``"0.05"`` (KL only) or ``"kl=0.05,ppl=0.10,mc=0.05"``; bad text raises :class:`ConfigError`."""
    text = text.strip()
    items = [f"kl={text}"] if "=" not in text else [part for part in text.split(",") if part.strip()]
    values: dict[str, float] = {}
    for item in items:
        key, _, value = item.partition("=")
        key = key.strip()
        if key not in ("kl", "ppl", "mc"):
            raise ConfigError(
                f"--max-drift: unknown threshold {key!r}; use kl=…, ppl=… (fraction) and mc=… (accuracy drop)"
            )
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"--max-drift: {key}={value!r} is not a number") from None
        if not math.isfinite(number) or number < 0:
            raise ConfigError(f"--max-drift: {key} must be a non-negative number, got {value!r}")
        values[key] = number
    return Thresholds(**values)


def gate_failures(base: RegressionScores, adapters: dict[str, RegressionScores], thresholds: Thresholds) -> list[str]:
    """One sentence per adapter and threshold it exceeds (empty: every adapter passes)."""
    failures = []
    for name, scores in adapters.items():
        if thresholds.kl is not None and scores.kl > thresholds.kl:
            failures.append(f"{name}: KL(base ‖ adapted) {scores.kl:.4g} > {thresholds.kl:g}")
        growth = scores.perplexity / base.perplexity - 1
        if thresholds.ppl is not None and growth > thresholds.ppl:
            failures.append(f"{name}: general-text perplexity +{100 * growth:.1f}% > +{100 * thresholds.ppl:g}%")
        drop = base.mc_accuracy - scores.mc_accuracy
        if thresholds.mc is not None and drop > thresholds.mc:
            failures.append(f"{name}: general multiple-choice accuracy −{drop:.3f} > −{thresholds.mc:g}")
    return failures
