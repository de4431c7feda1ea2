"""The YAML writer: every value lorakit writes reads back through the strict reader as the same value.

PyYAML's safe dumper follows YAML 1.1 and writes strings such as ``"1e5"`` or ``"+.5"`` unquoted, which the
strict reader (YAML 1.2 numbers) reads as floats; :func:`dump_yaml` quotes every string any of the three rule
sets would read as another type.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import yaml

from lorakit.core.files import atomic
from lorakit.core.files.strict_yaml import dump_yaml, parse_yaml, read_yaml

# strings that look like numbers, booleans, nulls, dates or YAML syntax in YAML 1.1, YAML 1.2 or the strict reader
NUMBER_LIKE = ["1e5", "1E5", "-1e-4", "1.5e3", "+.5", "1.", "1_000", "0o17", "0x1F", "0b101", "08", "-7", "12:30"]
SPECIAL_FLOATS = [".inf", "-.inf", "+.inf", ".Inf", ".nan", ".NaN"]
BOOL_LIKE = ["yes", "no", "on", "off", "y", "n", "Y", "N", "true", "False", "TRUE", "On", "NO"]
NULL_LIKE = ["null", "Null", "NULL", "~", ""]
DATE_LIKE = ["2026-01-01", "2026-01-01 10:00:00", "2026-1-1T10:00:00Z"]
SYNTAX_LIKE = [" lead", "trail ", "a: b", "#x", "x #y", "- a", "-", "[x]", "{a: 1}", "&a", "*a", "!tag", "|", ">", "?"]
SYNTAX_LIKE += ["'q'", '"q"', "=", "<<", "%x", "@x", "`x", "a,b", "1e5.jsonl", "data/1e5", "x" * 300 + " y"]
TEXT_LIKE = ["é✓", "日本語", "\U0001f600", "a\nb", "a\n", "\n", "\t", "\r\n", "\x00", "\x1b", "\x85", "\u2028"]
TEXT_LIKE += ["\u2029", "\ufeff", "\u00a0x", "a\\b", "  two  spaces  "]
STRINGS = NUMBER_LIKE + SPECIAL_FLOATS + BOOL_LIKE + NULL_LIKE + DATE_LIKE + SYNTAX_LIKE + TEXT_LIKE
# strings the strict reader and PyYAML read as strings but YAML 1.2 (or YAML 1.1's spec) reads as another type
OTHER_READERS = ["0o17", "08", "+08", "y", "n", "Y", "N"]

VALUES = [
    0,
    -3,
    10**20,
    1e-4,
    0.1,
    1e-5,
    1e20,
    -0.0,
    2.5,
    math.inf,
    -math.inf,
    True,
    False,
    None,
    [],
    {},
    [1, "1e5", [None, "yes", {"k": 1e-4}]],
    {"lr": 1e-4, "name": "1e5", "nested": {"on": "off", "list": ["~", 0.1, -0.0]}},
]


def _same(got, want) -> bool:
    """Equal values of the same types (NaN equal to NaN, -0.0 told from 0.0)."""
    if type(got) is not type(want):
        return False
    if isinstance(want, float):
        if math.isnan(want):
            return math.isnan(got)
        return got == want and math.copysign(1, got) == math.copysign(1, want)
    if isinstance(want, list):
        return len(got) == len(want) and all(_same(g, w) for g, w in zip(got, want))
    if isinstance(want, dict):
        return list(got) == list(want) and all(_same(got[k], want[k]) for k in want)
    return got == want


@pytest.mark.parametrize("text", STRINGS, ids=[repr(s) for s in STRINGS])
def test_a_string_reads_back_as_that_string_as_a_value_a_key_and_in_a_list(text):
    data = {"value": text, text: [text, {"k": text}]}
    written = dump_yaml(data)
    assert _same(parse_yaml(written, "f.yaml"), data), written
    assert _same(yaml.safe_load(written), data), written  # and under PyYAML's YAML 1.1 rules


@pytest.mark.parametrize("text", OTHER_READERS)
def test_a_string_other_yaml_readers_take_for_a_number_or_boolean_is_quoted(text):
    assert dump_yaml({"k": text}) == f"k: '{text}'\n"


@pytest.mark.parametrize("value", VALUES, ids=[repr(v)[:40] for v in VALUES])
def test_a_value_reads_back_with_its_type(value):
    written = dump_yaml({"v": value})
    assert _same(parse_yaml(written, "f.yaml"), {"v": value}), written


def test_nan_reads_back_as_nan():
    assert math.isnan(parse_yaml(dump_yaml({"v": math.nan}), "f.yaml")["v"])


def test_random_strings_of_yaml_syntax_read_back(tmp_path):
    """5000 seeded random strings from an alphabet of YAML's indicators, digits, line breaks and unicode."""
    alphabet = list("0123456789eE+-._:oxbyYnN~#&*!|>%@`\"' \t\n\r,[]{}?=<ailnfutrsTFO") + [
        "é", "\x85", "\u2028", "\u2029", "\ufeff", "\x00", "✓", "\x7f", "\u00a0", "\U0001f600", "\ue000",
    ]  # fmt: skip
    rng = random.Random(0)
    path = tmp_path / "f.yaml"
    for _ in range(5):  # 1000 strings a file: the reader takes at most MAX_NODES nodes
        strings = ["".join(rng.choices(alphabet, k=rng.randint(0, 8))) for _ in range(1000)]
        data = {"values": strings, "keys": {s: i for i, s in enumerate(strings)}}
        atomic.write_text(path, dump_yaml(data))
        assert _same(read_yaml(path), data)


def test_key_order_is_kept_and_nothing_is_wrapped_or_aliased():
    shared = {"x": 1}
    long = "word " * 40
    written = dump_yaml({"z": shared, "a": shared, "m": long})
    assert written.splitlines()[0] == "z:" and "a:" in written.splitlines()[2]
    assert "&" not in written and "*" not in written
    assert f"m: '{long}'" in written.splitlines()


def test_a_value_yaml_cannot_hold_is_a_type_error_naming_its_type():
    with pytest.raises(TypeError, match=r"cannot write a PosixPath value as YAML \(PosixPath\('x'\)\)"):
        dump_yaml({"path": Path("x")})
