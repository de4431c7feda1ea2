"""Task specs, data rows in every accepted shape, default metrics, thresholds and the gate — no model needed."""

from __future__ import annotations

import json
import math

import pytest

from lorakit.core.errors import ConfigError, DataError
from lorakit.eval.data import load_rows
from lorakit.eval.regression import RegressionScores, Thresholds, gate_failures, load_regression_set, parse_thresholds
from lorakit.eval.report import EvalReport
from lorakit.eval.spec import TaskSpec, load_spec
from lorakit.eval.task import plan_task


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_every_row_shape_gives_prompt_and_reference(tmp_path):
    rows = load_rows(
        _jsonl(
            tmp_path / "d.jsonl",
            [
                {
                    "messages": [
                        {"role": "system", "content": "S"},
                        {"role": "user", "content": "U"},
                        {"role": "assistant", "content": "A"},
                    ]
                },
                {"instruction": "Do it.", "input": "x", "output": "done"},
                {"prompt": "P", "completion": "C"},
                {"question": "Q?", "choices": ["a", "b"], "answer": "b"},
            ],
        )
    )
    assert (
        rows[0].prompt == [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
        and rows[0].reference == "A"
    )
    assert rows[1].prompt == "Do it.\n\nx" and rows[1].reference == "done"
    assert rows[2].prompt == "P" and rows[2].reference == "C" and rows[2].plain
    assert rows[3].choices == ["a", "b"] and rows[3].answer == 1
    assert [r.where for r in rows] == [f"{tmp_path / 'd.jsonl'}:{i}" for i in (1, 2, 3, 4)]


def test_csv_rows_are_read_through_the_data_layer(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("prompt,reference\nCapital of France?,Paris\n")
    rows = load_rows(path)
    assert rows[0].prompt == "Capital of France?" and rows[0].reference == "Paris" and rows[0].where == f"{path}:2"


@pytest.mark.parametrize(
    "row, message",
    [
        ({"reference": "x"}, "no prompt"),
        ({"prompt": 3, "reference": "x"}, "'prompt' must be text"),
        ({"question": "Q", "choices": ["a"], "answer": 0}, "at least two"),
        ({"question": "Q", "choices": ["a", "b"], "answer": 5}, "neither an index"),
        ({"messages": [{"role": "assistant", "content": "A"}]}, "only an assistant message"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, row, message):
    path = _jsonl(tmp_path / "d.jsonl", [{"prompt": "ok", "reference": "ok"}, row])
    with pytest.raises(DataError, match=message) as err:
        load_rows(path)
    assert f"{path}:2" in str(err.value)


def test_default_metrics_follow_the_data(tmp_path):
    text = load_rows(_jsonl(tmp_path / "t.jsonl", [{"prompt": "p", "reference": "r"}]))
    assert plan_task(text, TaskSpec()).metrics == [
        "exact_match",
        "normalized_match",
        "token_f1",
        "rouge_l",
        "perplexity",
    ]
    objs = load_rows(
        _jsonl(
            tmp_path / "j.jsonl",
            [{"prompt": "p", "reference": {"a": 1, "b": 2}}, {"prompt": "q", "reference": '{"a": 3, "b": 4}'}],
        )
    )
    plan = plan_task(objs, TaskSpec(regex=r"\{.*\}"))
    assert plan.metrics == ["json", "perplexity", "regex"] and plan.fields == ["a", "b"]
    assert plan.json_references == [{"a": 1, "b": 2}, {"a": 3, "b": 4}]
    mixed = load_rows(
        _jsonl(
            tmp_path / "m.jsonl",
            [{"question": "Q", "choices": ["a", "b"], "answer": 0}, {"prompt": "P", "completion": "C"}],
        )
    )
    plan = plan_task(mixed, TaskSpec())
    assert plan.metrics[0] == "choice" and len(plan.choice_rows) == 1 and plan.chat is True
    assert (
        plan_task(load_rows(_jsonl(tmp_path / "c.jsonl", [{"prompt": "P", "completion": "C"}])), TaskSpec()).chat
        is False
    )


def test_spec_names_fields_rows_must_have(tmp_path):
    rows = load_rows(
        _jsonl(
            tmp_path / "d.jsonl", [{"prompt": "p", "reference": {"a": 1}}, {"prompt": "q", "reference": "plain words"}]
        )
    )
    with pytest.raises(DataError, match=r"d.jsonl:2: the reference is not a JSON object"):
        plan_task(rows, TaskSpec(fields=["a"]))
    with pytest.raises(DataError, match="no reference"):
        plan_task(load_rows(_jsonl(tmp_path / "n.jsonl", [{"prompt": "p"}])), TaskSpec())
    with pytest.raises(DataError, match="no data row has 'choices'"):
        plan_task(rows, TaskSpec(metrics=["choice"]))


def test_spec_yaml_loading_and_errors(tmp_path):
    (tmp_path / "schema.json").write_text('{"type": "object"}')
    (tmp_path / "ok.yaml").write_text(
        "metrics: [json, schema]\nfields: [a]\nschema_file: schema.json\nmax_new_tokens: 8\n"
    )
    spec = load_spec(tmp_path / "ok.yaml")
    assert spec.schema == {"type": "object"} and spec.fields == ["a"] and spec.max_new_tokens == 8
    for text, message in [
        ("metric: [json]\n", "unknown key 'metric'"),
        ("metrics: [bleu]\n", "bleu"),
        ("metrics: [regex]\n", "gives no 'regex'"),
        ("batch_size: 0\n", "positive integer"),
        ("fields: a\n", "list of field names"),
        ("schema_file: missing.json\n", "could not be read"),
    ]:
        (tmp_path / "bad.yaml").write_text(text)
        with pytest.raises(ConfigError, match=message) as err:
            load_spec(tmp_path / "bad.yaml")
        assert "bad.yaml" in str(err.value)


def test_thresholds_parse_and_gate_by_hand():
    assert parse_thresholds("0.05") == Thresholds(kl=0.05)
    assert parse_thresholds("kl=0.1, ppl=0.2,mc=0.05") == Thresholds(kl=0.1, ppl=0.2, mc=0.05)
    for bad in ("x=1", "kl=abc", "kl=-1", "kl=nan"):
        with pytest.raises(ConfigError):
            parse_thresholds(bad)
    base = RegressionScores(kl=0.0, perplexity=10.0, mc_accuracy=0.80)
    adapters = {
        "same": RegressionScores(0.0, 10.0, 0.80),
        "ppl": RegressionScores(0.01, 11.5, 0.80),
        "mc": RegressionScores(0.01, 10.0, 0.70),
    }
    failures = gate_failures(base, adapters, Thresholds(kl=0.02, ppl=0.10, mc=0.05))
    assert failures == [
        "ppl: general-text perplexity +15.0% > +10%",
        "mc: general multiple-choice accuracy −0.100 > −0.05",
    ]
    assert gate_failures(base, adapters, Thresholds(kl=0.005)) == [
        "ppl: KL(base ‖ adapted) 0.01 > 0.005",
        "mc: KL(base ‖ adapted) 0.01 > 0.005",
    ]


def test_regression_yaml_replaces_only_the_sets_it_names(tmp_path):
    _jsonl(tmp_path / "p.jsonl", [{"prompt": "mine"}])
    (tmp_path / "r.yaml").write_text("prompts: p.jsonl\n")
    rset = load_regression_set(tmp_path / "r.yaml")
    assert rset.prompts == ["mine"] and len(rset.texts) >= 10 and len(rset.choices) >= 40
    (tmp_path / "bad.yaml").write_text("prompt: p.jsonl\n")
    with pytest.raises(ConfigError, match="unknown key 'prompt'"):
        load_regression_set(tmp_path / "bad.yaml")


def test_report_json_has_no_nan():
    report = EvalReport(
        base={"name": "b", "fingerprint": "f"},
        data="d",
        columns=["base"],
        adapters={},
        task={},
        metrics={"reference_loss": {"base": math.nan}},
        regression=None,
        thresholds=None,
        failures=[],
        samples=[],
        seconds=1.0,
    )
    assert json.loads(report.to_json())["metrics"]["reference_loss"]["base"] is None
