"""YAML files every strict reader must refuse at ``file:line``, shared by the reader's tests and its users'.

Each case: (label, the file's bytes, the line the error must name, a regex the rest of the message must match).
"""

from __future__ import annotations

import re

import pytest

from lorakit.core.errors import ConfigError

# 7 anchors of 10 aliases each: 60 alias uses (under the 100 allowed) that expand to 10^7 values
ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n" for p, n in zip("abcdef", "bcdefg")
)

BAD_FILES = [
    ("duplicate key", b"a: 1\nb: 2\na: 3\n", 3, r"duplicate key 'a' \(first given at line 1\)"),
    ("duplicate nested key", b"outer:\n  x: 1\n  y: 2\n  x: 3\n", 4, r"duplicate key 'x' \(first given at line 2\)"),
    ("duplicate section", b"s:\n  x: 1\nt: 2\ns:\n  y: 1\n", 4, r"duplicate key 's' \(first given at line 1\)"),
    ("alias bomb", ALIAS_BOMB.encode(), 4, r"aliases expand to more than 10000 values"),
    (
        "alias fan-out",
        ("a: &a [1, 2, 3]\n" + "".join(f"k{i}: *a\n" for i in range(120))).encode(),
        102,
        r"more than 100 alias uses",
    ),
    ("recursive alias", b"a: 1\nb: &b [*b]\n", 2, r"a recursive alias"),
    ("tab indentation", b"a:\n\tb: 1\n", 2, r"invalid YAML \(found character '\\t' that cannot start any token\)"),
    ("unsafe tag", b"a: 1\nb: !!python/object/apply:os.system [echo]\n", 2, r"invalid YAML \(could not determine"),
    ("two documents", b"a: 1\n---\nb: 2\n", 2, r"invalid YAML \(but found another document\)"),
    ("unclosed list", b"a: [1, 2\nb: 3\n", 2, r"invalid YAML \(expected ',' or '\]'"),
    ("not UTF-8", b"a: 1\nb: caf\xe9\n", 2, r"is not UTF-8 text \(byte 0xe9 at column 7\)"),
]
BAD_IDS = [case[0] for case in BAD_FILES]


def refused_at(call, path, line: int, message: str, error: type[ConfigError] = ConfigError) -> str:
    """Run ``call()``, which must raise ``error`` as one line starting ``path:line:`` and matching ``message``."""
    with pytest.raises(error) as caught:
        call()
    text = str(caught.value)
    assert text.startswith(f"{path}:{line}: ") and re.search(message, text), text
    assert "\n" not in text and len(text) < 400, text
    return text
