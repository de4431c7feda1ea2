"""Task metrics on generated text.

Each ``*_scores`` function returns one score per row in [0, 1]; the mean is the metric.

Normalisation (``normalize``), as in SQuAD: lower-case, punctuation removed, the articles ``a an the``
dropped, whitespace collapsed. Tokens are the whitespace-separated words of the normalised text.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Sequence
from typing import Any

from lorakit.core.errors import ConfigError, DataError

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)
_FENCE = re.compile(r"^```[A-Za-z0-9_-]*[ \t]*\n(.*)\n```$", re.DOTALL)


def normalize(text: str) -> str:
    """Lower-case, strip punctuation and the articles a/an/the, collapse whitespace."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def _check_lengths(predictions: Sequence, references: Sequence) -> None:
    if len(predictions) != len(references):
        raise DataError(
            f"{len(predictions)} predictions for {len(references)} references: give one prediction per reference"
        )
    if not predictions:
        raise DataError("no predictions to score: the evaluation data is empty")


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def exact_match_scores(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """1 when the prediction equals the reference after stripping surrounding whitespace."""
    _check_lengths(predictions, references)
    return [float(p.strip() == r.strip()) for p, r in zip(predictions, references)]


def normalized_match_scores(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """1 when ``normalize(prediction) == normalize(reference)``."""
    _check_lengths(predictions, references)
    return [float(normalize(p) == normalize(r)) for p, r in zip(predictions, references)]


def token_f1(prediction: str, reference: str) -> float:
    """F1 of the multiset overlap of normalised tokens: P = common/|pred|, R = common/|ref|, F1 = 2PR/(P+R).

    Two empty texts score 1; one empty text scores 0.
    """
    pred, ref = normalize(prediction).split(), normalize(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def token_f1_scores(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    _check_lengths(predictions, references)
    return [token_f1(p, r) for p, r in zip(predictions, references)]


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (dynamic programming, O(|a|·|b|) time, O(|b|) memory)."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 on normalised tokens: P = LCS/|pred|, R = LCS/|ref|, F1 = 2PR/(P+R). Empty vs empty is 1."""
    pred, ref = normalize(prediction).split(), normalize(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    lcs = lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def rouge_l_scores(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    _check_lengths(predictions, references)
    return [rouge_l(p, r) for p, r in zip(predictions, references)]


def regex_scores(predictions: Sequence[str], pattern: str) -> list[float]:
    """1 when the whole prediction, stripped of surrounding whitespace, matches ``pattern`` (``re.fullmatch``)."""
    try:
        compiled = re.compile(pattern)
    except re.error as err:
        raise ConfigError(f"task spec regex {pattern!r} is not a valid regular expression: {err}") from None
    return [float(compiled.fullmatch(p.strip()) is not None) for p in predictions]


def parse_json_output(text: str) -> Any:
    """The JSON value in a model output, or ``None`` when it does not parse.

    Forgiven: whitespace around the value, and one Markdown code fence around it (```` ```json ```` …
    ```` ``` ````). Nothing else: prose before or after the JSON makes the output invalid.
    """
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1).strip()
    try:
        return json.loads(body)
    except ValueError:
        return None


def json_task_scores(predictions: Sequence[str], references: Sequence[dict], fields: Sequence[str]) -> dict[str, Any]:
    """JSON task metrics, each a fraction of rows.

    ``json_valid``: the output parses (see :func:`parse_json_output`) to a JSON object.
    ``field_accuracy[f]``: the parsed object's value for ``f`` equals the reference's (invalid output: wrong).
    ``exact_match``: every field in ``fields`` is right.
    """
    _check_lengths(predictions, references)
    if not fields:
        raise ConfigError("json_task_scores needs at least one field to compare")
    for i, ref in enumerate(references):
        missing = [f for f in fields if not isinstance(ref, dict) or f not in ref]
        if missing:
            raise DataError(
                f"reference {i} has no field {missing[0]!r}; every reference must hold the fields {list(fields)}"
            )
    rows = [json_row_scores(p, r, fields) for p, r in zip(predictions, references)]
    return {
        "exact_match": mean([r["exact_match"] for r in rows]),
        "json_valid": mean([r["json_valid"] for r in rows]),
        "field_accuracy": {f: mean([r["fields"][f] for r in rows]) for f in fields},
    }


def json_row_scores(prediction: str, reference: dict, fields: Sequence[str]) -> dict[str, Any]:
    """One row's JSON scores: ``json_valid``, ``exact_match`` and per-field 0/1 in ``fields``."""
    parsed = parse_json_output(prediction)
    valid = isinstance(parsed, dict)
    right = {f: float(valid and f in parsed and parsed[f] == reference[f]) for f in fields}
    return {"json_valid": float(valid), "exact_match": float(all(right.values())), "fields": right}


def schema_scores(predictions: Sequence[str], schema: dict) -> list[float]:
    """1 when the output parses as JSON and validates against the JSON Schema ``schema``
    (its own draft, else 2020-12).
    """
    import jsonschema

    validator_class = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        validator_class.check_schema(schema)
    except jsonschema.SchemaError as err:
        raise ConfigError(f"task spec schema is not a valid JSON Schema: {err.message}") from None
    validator = validator_class(schema)
    scores = []
    for p in predictions:
        parsed = parse_json_output(p)
        scores.append(float(parsed is not None and validator.is_valid(parsed)))
    return scores
