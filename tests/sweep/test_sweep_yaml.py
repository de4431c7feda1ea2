"""Sweep files, the config and task files they name, and ``--set`` values are read by the strict YAML reader:
each fault refused at ``file:line`` (``--set key`` for a value), and ``lorakit sweep`` exits 2 with that one line."""

from __future__ import annotations

import pytest

from lorakit.sweep import load_sweep
from lorakit.train.config import load_config
from tests.core.yaml_cases import BAD_FILES, BAD_IDS, refused_at
from tests.helpers import run_cli


def _sweep_naming(tmp_path, bad):
    """A sweep file whose only fault is in the file ``bad`` it names (``config`` or ``eval.task``)."""
    sweep = tmp_path / "sweep.yaml"
    if bad.name == "config.yaml":
        sweep.write_text(f"config: {bad}\n")
    else:
        sweep.write_text(f"config: {{}}\neval: {{task: {bad}}}\n")
    return sweep


@pytest.mark.parametrize("label, content, line, message", BAD_FILES, ids=BAD_IDS)
@pytest.mark.parametrize("faulty", ["sweep.yaml", "config.yaml", "task.yaml"])
def test_a_faulty_sweep_config_or_task_file_is_refused_at_its_file_and_line(
    tmp_path, faulty, label, content, line, message
):
    bad = tmp_path / faulty
    sweep = _sweep_naming(tmp_path, bad) if faulty != "sweep.yaml" else bad
    bad.write_bytes(content)
    refused_at(lambda: load_sweep(sweep), bad, line, message)


@pytest.mark.parametrize("label, content, line, message", BAD_FILES, ids=BAD_IDS)
def test_sweep_cli_exits_2_with_one_line_naming_file_and_line(
    tmp_path, capsys, monkeypatch, label, content, line, message
):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    code, out, err = run_cli(capsys, monkeypatch, "sweep", str(path))
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"{path}:{line}: " in err and out == ""


# (a --set value, a regex the rest of the message must match)
BAD_VALUES = [
    ("{low: 2, low: 4}", r"duplicate key 'low' \(first given at line 1\)"),
    ("[&a 1, " + ", ".join(["*a"] * 101) + "]", r"more than 100 alias uses"),
    ("&a [*a]", r"a recursive alias"),
    ("[4, 8", r"invalid YAML \(expected ',' or '\]'"),
    ("!!python/object/apply:os.system [echo]", r"invalid YAML \(could not determine"),
    ("*out", r"invalid YAML \(found undefined alias 'out'\)"),
]
VALUE_IDS = ["duplicate key", "alias fan-out", "recursive alias", "unclosed list", "unsafe tag", "undefined alias"]
# a reader of --set: the key a value is given to, and how the overrides are read
SET_READERS = {
    "sweep space": ("space.lora.r", lambda o: load_sweep({"config": {}}, o)),
    "sweep budget": ("budget.trials", lambda o: load_sweep({"config": {}}, o)),
    "sweep config": ("config.train.lr", lambda o: load_sweep({"config": {}}, o)),
    "train": ("train.lr", lambda o: load_config({}, o)),
}


@pytest.mark.parametrize("value, message", BAD_VALUES, ids=VALUE_IDS)
@pytest.mark.parametrize("reader", SET_READERS)
def test_a_faulty_set_value_is_refused_naming_the_override(reader, value, message):
    key, read = SET_READERS[reader]
    refused_at(lambda: read([f"{key}={value}"]), f"--set {key}", 1, message)


@pytest.mark.parametrize("value, message", BAD_VALUES[:2], ids=VALUE_IDS[:2])
def test_sweep_cli_exits_2_on_a_faulty_set_value(tmp_path, capsys, monkeypatch, value, message):
    path = tmp_path / "sweep.yaml"
    path.write_text("config: {}\n")
    code, out, err = run_cli(capsys, monkeypatch, "sweep", str(path), "--set", f"space.lora.r={value}")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "--set space.lora.r:1: " in err and out == ""
