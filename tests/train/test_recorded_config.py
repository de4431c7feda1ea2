"""The ``config.yaml`` a run records reads back through the strict reader as the resolved config, so
``lorakit train --resume RUN_DIR`` continues the same run; a hand edit that gives a key twice is refused at
``config.yaml:line``."""

from __future__ import annotations

import json
import shutil

import pytest

from lorakit.core.files.strict_yaml import read_yaml
from lorakit.train.checkpoint import RUN_CONFIG, list_checkpoints
from lorakit.train.config import load_config
from tests.helpers import run_cli

ROWS = [{"prompt": f"Q{i}: colour {i}?", "completion": f" it is {c}"} for i, c in enumerate(["red", "blue"] * 3)]
# strings PyYAML's safe_dump writes unquoted and the strict reader would read back as floats
NUMBER_LIKE = {"run_name": "1e5", "experiment": "+.5"}


def _stopped_run(base, tmp_path):
    """A 3-step run whose config holds number-like strings, as a kill after step 2's checkpoint leaves it."""
    data = tmp_path / "1e5.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    run = tmp_path / "run"
    config = {
        "base": base,
        "lora": {"r": 4, "alpha": 8},
        "data": {"train": str(data), "format": "completion", "max_length": 32},
        "train": {"max_steps": 3, "batch_size": 2, "lr": 1e-3, "precision": "fp32", "save_every": 1},
        "tracking": NUMBER_LIKE,
        "output": str(run),
    }
    path = tmp_path / "train.yaml"
    path.write_text(json.dumps(config, indent=1))  # JSON is YAML, every string quoted
    return path, run


@pytest.fixture
def stopped(base, tmp_path, capsys, monkeypatch):
    path, run = _stopped_run(base, tmp_path)
    code, out, err = run_cli(capsys, monkeypatch, "train", str(path), "--no-progress")
    assert code == 0 and "done: 3 steps" in out, err
    shutil.rmtree(run / "adapter")
    shutil.rmtree(list_checkpoints(run / "checkpoints")[-1])
    return path, run


def test_a_number_like_string_in_the_config_survives_resume_from_the_run_dir(stopped, capsys, monkeypatch):
    path, run = stopped
    code, out, err = run_cli(capsys, monkeypatch, "train", "--resume", str(run), "--no-progress")
    assert code == 0 and "done: 3 steps" in out, err
    recorded = read_yaml(run / RUN_CONFIG, "recorded run config")
    assert recorded == load_config(path).resolved()
    assert recorded["tracking"] | NUMBER_LIKE == recorded["tracking"]
    assert recorded["data"]["train"].endswith("1e5.jsonl")
    assert json.loads((run / "lorakit.json").read_text())["config"] == recorded


@pytest.mark.parametrize("form", ["--resume RUN_DIR", "CONFIG --resume auto"])
def test_a_recorded_config_with_a_duplicate_key_is_refused_at_its_line_on_resume(stopped, capsys, monkeypatch, form):
    path, run = stopped
    recorded = run / RUN_CONFIG
    lines = recorded.read_text().splitlines(keepends=True)
    first = next(n for n, line in enumerate(lines, 1) if line.startswith("output:"))
    recorded.write_text("".join(lines) + f"output: {run}\n")
    args = ["--resume", str(run)] if form == "--resume RUN_DIR" else [str(path), "--resume", "auto"]
    code, out, err = run_cli(capsys, monkeypatch, "train", *args, "--no-progress")
    message = err.strip().splitlines()  # one line, before the model loads (its loading bar would show)
    assert code == 2 and len(message) == 1, err
    duplicate = f"duplicate key 'output' (first given at line {first})"
    assert message[0].startswith(f"error: {recorded}:{len(lines) + 1}: {duplicate}"), err
