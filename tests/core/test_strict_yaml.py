"""The strict YAML reader every YAML file goes through: refusals at ``file:line``, and equal values otherwise."""

from __future__ import annotations

import os

import pytest
import yaml

from lorakit.core.errors import ConfigError
from lorakit.core.files.strict_yaml import MAX_BYTES, parse_yaml, read_yaml
from lorakit.train.config import load_config
from tests.core.yaml_cases import BAD_FILES, BAD_IDS, refused_at

# documents on which YAML 1.1 (PyYAML's safe_load) and the strict reader agree
GOOD = [
    "",
    "a: 1\nb: [x, 2.5, true, null]\n",
    "outer: {x: 1, y: {z: 'q'}}\nlist:\n  - {k: 1}\n  - {k: 1}\n",
    "base: &b {x: 1, y: 2}\nuse:\n  <<: *b\n  y: 3\n",
    "shared: &s [1, 2]\nagain: *s\n",
    "text: |\n  two\n  lines\nquoted: '1e-4'\n",
]


@pytest.mark.parametrize("text", GOOD)
def test_documents_without_a_fault_read_as_safe_load_reads_them(text):
    assert parse_yaml(text, "f.yaml") == yaml.safe_load(text)


@pytest.mark.parametrize(
    "text, value",
    [("1e-4", 1e-4), ("-2E+3", -2000.0), ("5e0", 5.0), ("1.5e-3", 1.5e-3), ("'1e-4'", "1e-4"), ("1_000", 1000)],
)
def test_exponent_numbers_are_floats_as_in_yaml_1_2(text, value):
    parsed = parse_yaml(f"v: {text}\n", "f.yaml")["v"]
    assert parsed == value and type(parsed) is type(value)


@pytest.mark.parametrize("label, content, line, message", BAD_FILES, ids=BAD_IDS)
@pytest.mark.parametrize("reader", ["read_yaml", "run config"])
def test_a_faulty_file_is_refused_at_file_and_line(tmp_path, reader, label, content, line, message):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    call = {"read_yaml": lambda: read_yaml(path), "run config": lambda: load_config(path)}[reader]
    refused_at(call, path, line, message)


@pytest.mark.parametrize(
    "label, content, line, message",
    [case for case in BAD_FILES if case[0] != "not UTF-8"],
    ids=[i for i in BAD_IDS if i != "not UTF-8"],
)
def test_text_is_refused_at_source_and_line(label, content, line, message):
    refused_at(lambda: parse_yaml(content.decode(), "--set x"), "--set x", line, message)


@pytest.mark.parametrize(
    "make, shown",
    [
        (lambda p: None, "YAML file not found"),
        (lambda p: p.mkdir(), "is a directory, not a regular file"),
        (lambda p: os.mkfifo(p), r"is a FIFO \(named pipe\), not a regular file"),
        (lambda p: p.write_bytes(b"x" * (MAX_BYTES + 1)), f"more than the {MAX_BYTES} allowed"),
        (lambda p: p.write_text("- a\n- b\n"), "must be a mapping of keys, got list"),
    ],
    ids=["missing", "directory", "fifo", "too large", "a list"],
)
def test_a_path_that_is_not_a_small_yaml_mapping_is_refused_naming_it(tmp_path, make, shown):
    path = tmp_path / "c.yaml"
    make(path)
    with pytest.raises(ConfigError, match=shown) as caught:
        read_yaml(path)
    assert str(caught.value).startswith(f"{path}: ")


def test_what_and_keys_name_the_file_in_errors(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("[1]\n")
    with pytest.raises(ConfigError, match=r"the task spec must be a mapping of keys \(metrics, …\), got list"):
        read_yaml(path, "task spec", "metrics, …")
    path.write_text("")
    assert read_yaml(path, "task spec") == {}
    path.write_bytes(b"\xef\xbb\xbfa: 1\n")
    assert read_yaml(path) == {"a": 1}
