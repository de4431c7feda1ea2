"""Every task metric against values computed by hand on small fixtures."""

from __future__ import annotations

import pytest

from lorakit.core.errors import ConfigError, DataError
from lorakit.eval import metrics as m
from lorakit.eval.report_format import best_columns, format_value


def test_normalize_lowercases_strips_punctuation_and_articles():
    assert m.normalize("  The Cat, sat on  a MAT!  ") == "cat sat on mat"


def test_exact_and_normalized_match():
    preds, refs = ["Paris ", "the paris.", "Lyon"], ["Paris", "Paris", "Paris"]
    assert m.exact_match_scores(preds, refs) == [1.0, 0.0, 0.0]
    assert m.normalized_match_scores(preds, refs) == [1.0, 1.0, 0.0]


def test_token_f1_by_hand():
    # pred tokens [cat, sat, down], ref tokens [cat, sat, on, mat]: common 2, P = 2/3, R = 2/4, F1 = 4/7
    assert m.token_f1("The cat sat down", "the cat sat on the mat") == pytest.approx(4 / 7)
    # multiset overlap: pred [a, a, b] vs ref [a, b, b] after normalisation ("a" is an article, so use x/y)
    assert m.token_f1("x x y", "x y y") == pytest.approx(2 / 3)
    assert m.token_f1("", "") == 1.0 and m.token_f1("x", "") == 0.0 and m.token_f1("x", "y") == 0.0


def test_rouge_l_by_hand():
    # pred [police, killed, gunman], ref [police, kill, gunman]: LCS = 2 (police, gunman), P = R = 2/3
    assert m.rouge_l("police killed the gunman", "police kill the gunman") == pytest.approx(2 / 3)
    # pred [gunman, killed, police] vs ref [police, killed, gunman]: LCS = 1, P = R = 1/3
    assert m.rouge_l("gunman killed police", "police killed gunman") == pytest.approx(1 / 3)
    # pred [b, c, d, e] vs ref [b, x, c, e, y]: LCS = 3 (b, c, e), P = 3/4, R = 3/5, F1 = 2/3
    assert m.rouge_l("b c d e", "b x c e y") == pytest.approx(2 * 0.75 * 0.6 / 1.35)
    assert m.lcs_length(list("ABCBDAB"), list("BDCABA")) == 4


def test_regex_compliance_matches_the_whole_stripped_output():
    assert m.regex_scores([" 42 ", "42 apples", "x"], r"\d+") == [1.0, 0.0, 0.0]
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        m.regex_scores(["1"], "(")


def test_parse_json_output_forgives_whitespace_and_one_fence_only():
    assert m.parse_json_output('  {"a": 1}\n') == {"a": 1}
    assert m.parse_json_output('```json\n{"a": 1}\n```') == {"a": 1}
    assert m.parse_json_output("```\n[1, 2]\n```") == [1, 2]
    assert m.parse_json_output('Sure! {"a": 1}') is None
    assert m.parse_json_output('{"a": 1') is None


def test_json_task_scores_by_hand():
    refs = [{"name": "Ann", "city": "Oslo"}] * 4
    preds = [
        '{"name": "Ann", "city": "Oslo"}',  # all right
        '```json\n{"name": "Ann", "city": "Rome"}\n```',  # name right, city wrong
        '{"city": "Oslo"}',  # name missing, city right
        "not json",
    ]  # invalid
    scores = m.json_task_scores(preds, refs, ["name", "city"])
    assert scores == {"exact_match": 0.25, "json_valid": 0.75, "field_accuracy": {"name": 0.5, "city": 0.5}}


def test_json_task_scores_bad_input():
    with pytest.raises(DataError, match="reference 1 has no field 'city'"):
        m.json_task_scores(["{}", "{}"], [{"city": "x"}, {"name": "y"}], ["city"])
    with pytest.raises(DataError, match="2 predictions for 1 references"):
        m.json_task_scores(["{}", "{}"], [{"a": 1}], ["a"])
    with pytest.raises(DataError, match="empty"):
        m.json_task_scores([], [], ["a"])


def test_schema_compliance():
    schema = {
        "type": "object",
        "required": ["urgency"],
        "properties": {"urgency": {"enum": ["high", "low"]}},
        "additionalProperties": False,
    }
    preds = ['{"urgency": "high"}', '{"urgency": "medium"}', '{"urgency": "low", "x": 1}', "high"]
    assert m.schema_scores(preds, schema) == [1.0, 0.0, 0.0, 0.0]
    with pytest.raises(ConfigError, match="not a valid JSON Schema"):
        m.schema_scores(["{}"], {"type": "no-such-type"})


def test_best_columns_and_directions():
    assert best_columns("exact_match", {"base": 0.2, "a": 0.5, "b": 0.5}) == {"a", "b"}
    assert best_columns("kl", {"base": 0.0, "a": 0.3}) == {"base"}
    assert best_columns("reference_perplexity", {"base": 9.0, "a": 3.0}) == {"a"}
    assert best_columns("token_f1", {"base": 0.4, "a": 0.4}) == set()
    assert format_value("perplexity_change", 0.0512) == "+5.12%" and format_value("kl", 0.0) == "0"
