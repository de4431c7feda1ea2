"""Task specs and regression files are read by the strict YAML reader: each fault refused at ``file:line``, and
``lorakit eval`` exits 2 with that one line before any model loads."""

from __future__ import annotations

import json

import pytest

from lorakit.core.errors import ConfigError
from lorakit.eval.regression import load_regression_set
from lorakit.eval.spec import load_spec
from tests.core.yaml_cases import BAD_FILES, BAD_IDS, refused_at
from tests.helpers import run_cli

READERS = {"task spec": load_spec, "regression file": load_regression_set}


@pytest.mark.parametrize("label, content, line, message", BAD_FILES, ids=BAD_IDS)
@pytest.mark.parametrize("reader", READERS)
def test_a_faulty_spec_file_is_refused_at_file_and_line(tmp_path, reader, label, content, line, message):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    text = refused_at(lambda: READERS[reader](path), path, line, message)
    assert label != "not UTF-8" or f"the {reader} is not UTF-8" in text


@pytest.mark.parametrize("label, content, line, message", BAD_FILES, ids=BAD_IDS)
@pytest.mark.parametrize("option", ["--task", "--regression"])
def test_eval_cli_exits_2_with_one_line_naming_file_and_line(
    tmp_path, capsys, monkeypatch, option, label, content, line, message
):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "p", "reference": "r"}) + "\n")
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    args = ["eval", "--base", str(tmp_path / "no-base"), "--data", str(data), option, str(path)]
    code, out, err = run_cli(capsys, monkeypatch, *args, "--out", str(tmp_path / "out"))
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"{path}:{line}: " in err and out == ""
    assert not (tmp_path / "out").exists()


def test_a_regression_path_that_does_not_exist_says_what_to_give(tmp_path):
    with pytest.raises(ConfigError, match="regression file not found; give 'default', 'none' or a YAML"):
        load_regression_set(tmp_path / "missing.yaml")
