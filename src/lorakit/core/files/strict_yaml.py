"""Reading YAML strictly: what YAML would accept silently is an error here. Every YAML file lorakit reads (run
configs, task specs, regression sets, sweep files, ``--set`` values, the ``config.yaml`` a run records) goes
through :func:`parse_yaml`, and every YAML file lorakit writes is written by :func:`dump_yaml`, so it reads back
as the same values.

- numbers in exponent form without a dot (``lr: 1e-4``) are floats, as YAML 1.2 and every user expects
  (PyYAML's YAML 1.1 rules would read a string);
- a key given twice in one mapping (also a whole section written twice) is refused with both line numbers,
  where PyYAML would keep the last value;
- alias expansion is bounded (:data:`MAX_ALIASES` uses, :data:`MAX_NODES` nodes once expanded; a recursive alias
  is refused), so a "billion laughs" file fails at once with a short message;
- only YAML's safe tags are constructed (``!!python/object`` and the like are invalid YAML here);
- the path must be a regular file (a FIFO or a device is refused, never waited on), at most :data:`MAX_BYTES`
  bytes of UTF-8 text (a bad byte is reported as ``file:line``).

Errors are :class:`~lorakit.core.errors.ConfigError` starting with ``file:line`` (``source:line`` for text).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import yaml

from lorakit.core.errors import ConfigError
from lorakit.core.files.text import read_utf8

MAX_BYTES = 1 << 20
"""Largest YAML file read, in bytes."""
MAX_ALIASES = 100
"""Most alias uses (``*name``) in one document."""
MAX_NODES = 10_000
"""Most YAML nodes once every alias is expanded."""
_MERGE_TAG = "tag:yaml.org,2002:merge"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_INT_TAG = "tag:yaml.org,2002:int"
_BOOL_TAG = "tag:yaml.org,2002:bool"
_FLOAT = re.compile(
    r"""^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
               |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
               |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
               |[-+]?\.(?:inf|Inf|INF)
               |\.(?:nan|NaN|NAN))$""",
    re.X,
)


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing duplicate keys and counting alias uses."""

    def __init__(self, stream: str, source: str) -> None:
        super().__init__(stream)
        self.source, self.aliases = source, 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                line = self.peek_event().start_mark.line + 1
                raise ConfigError(
                    f"{self.source}:{line}: more than {MAX_ALIASES} alias uses (*name); write the values out"
                )
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first_line: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key, line = self.construct_object(key_node), key_node.start_mark.line + 1
                if key in first_line:
                    raise ConfigError(
                        f"{self.source}:{line}: duplicate key {key!r} (first given at line "
                        f"{first_line[key]}); keep one of them"
                    )
                first_line[key] = line
        return super().construct_mapping(node, deep=deep)


_StrictLoader.add_implicit_resolver(_FLOAT_TAG, _FLOAT, list("-+0123456789."))

# plain scalars the strict reader reads as strings but other YAML readers do not: YAML 1.2 integers ("0o17",
# "08") and YAML 1.1's one-letter booleans ("y", "N"); the writer quotes them too
_OTHER_INT = re.compile(r"^[-+]?(?:0o[0-7]+|[0-9]+)$")
_OTHER_BOOL = re.compile(r"^(?:y|Y|n|N)$")
_RAW_BREAKS = "\x85\u2028\u2029"


class _StrictDumper(yaml.SafeDumper):
    """PyYAML's safe dumper resolving plain scalars as the strict reader does, so a string that would read back
    as another type is quoted; a value used twice is written twice (no anchors or aliases)."""

    def ignore_aliases(self, data) -> bool:
        return True

    def analyze_scalar(self, scalar: str):
        """PyYAML writes NEL, LINE SEPARATOR and PARAGRAPH SEPARATOR raw in single quotes, where a reader folds
        them into a space or a newline: a scalar holding one is written double-quoted, with escapes."""
        analysis = super().analyze_scalar(scalar)
        if any(ch in scalar for ch in _RAW_BREAKS):
            analysis.allow_flow_plain = analysis.allow_block_plain = False
            analysis.allow_single_quoted = analysis.allow_block = False
        return analysis


_StrictDumper.add_implicit_resolver(_FLOAT_TAG, _FLOAT, list("-+0123456789."))
_StrictDumper.add_implicit_resolver(_INT_TAG, _OTHER_INT, list("-+0123456789"))
_StrictDumper.add_implicit_resolver(_BOOL_TAG, _OTHER_BOOL, list("yYnN"))


def _expanded_size(node, sizes: dict[int, int], open_nodes: set[int], source: str) -> int:
    """Nodes in ``node`` with every alias written out (memoised; a cycle is a recursive alias)."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_nodes:
        raise ConfigError(f"{source}:{node.start_mark.line + 1}: a recursive alias (a value that contains itself)")
    open_nodes.add(id(node))
    children = (
        node.value
        if isinstance(node, yaml.SequenceNode)
        else ([part for pair in node.value for part in pair] if isinstance(node, yaml.MappingNode) else [])
    )
    total = 1
    for child in children:
        total += _expanded_size(child, sizes, open_nodes, source)
        if total > MAX_NODES:
            raise ConfigError(
                f"{source}:{node.start_mark.line + 1}: aliases expand to more than {MAX_NODES} values; "
                "write the values out without nested aliases"
            )
    open_nodes.discard(id(node))
    sizes[id(node)] = total
    return total


def parse_yaml(text: str, source: str) -> Any:
    """The value of one YAML document, read strictly (see the module docstring); ``None`` for an empty one.

    ``source`` names the text in errors (a file name, or ``--set key`` for a command-line value).

    Raises:
        ConfigError: ``source:line: …`` for invalid YAML, a duplicate key, too many or recursive aliases, an
            unsafe tag, or more than one document.
    """
    loader = _StrictLoader(text, source)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, {}, set(), source)
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{source}{line}: invalid YAML ({problem})") from None
    finally:
        loader.dispose()


def read_yaml(path: str | Path, what: str = "YAML file", keys: str = "") -> dict[str, Any]:
    """The top-level mapping of a YAML file (``{}`` for an empty file), read strictly by :func:`parse_yaml`.

    ``what`` names the file in errors (``"task spec"``); ``keys`` lists the keys it expects, for the error a
    file that is not a mapping gets.

    Raises:
        ConfigError: the path is missing or not a regular file, larger than :data:`MAX_BYTES` bytes, not UTF-8
            (``file:line``), not valid strict YAML (``file:line``, see :func:`parse_yaml`), or not a mapping.
    """
    raw = parse_yaml(read_utf8(path, what, ConfigError, max_bytes=MAX_BYTES), str(path))
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        expected = f" ({keys})" if keys else ""
        raise ConfigError(f"{path}: the {what} must be a mapping of keys{expected}, got {type(raw).__name__}")
    return raw


def dump_yaml(data: Any) -> str:
    """``data`` as YAML text that :func:`parse_yaml` reads back as equal values (NaN as NaN).

    ``data`` is built of ``dict``, ``list``, ``str``, ``int``, ``float``, ``bool`` and ``None`` (dates too);
    keys keep their order. PyYAML's safe dumper follows YAML 1.1 and writes a string such as ``"1e5"`` or
    ``"+.5"`` unquoted, which the strict reader (YAML 1.2 numbers) reads as a float; here every string that the
    strict reader, YAML 1.1 or YAML 1.2 would read as another type is quoted. Lines are not wrapped.

    Raises:
        TypeError: a value of another type (a tuple, a path, an object), named with its type.
    """
    try:
        return yaml.dump(data, Dumper=_StrictDumper, sort_keys=False, allow_unicode=True, width=math.inf)
    except yaml.representer.RepresenterError as err:
        value = err.args[1] if len(err.args) > 1 else None
        raise TypeError(
            f"cannot write a {type(value).__name__} value as YAML ({value!r}); give dicts, lists, str, int, "
            "float, bool or None"
        ) from None
