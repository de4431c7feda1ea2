"""Exact resume: a run killed with SIGKILL (or stopped with Ctrl-C) and resumed ends with the same adapter.

Every run is a real ``lorakit train`` process with one thread (fp32), so the reference and the resumed run do
the same arithmetic in the same order; the tensors must be identical, not merely close.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from lorakit.cli.quickstart import tiny_base
from lorakit.core import bases

ROWS = [
    {"prompt": f"Q{i}: colour of item {i}?", "completion": f" item {i} is {c}"}
    for i, c in enumerate(["red", "blue", "green", "black", "white"] * 3)
]
STEPS = 14


def _write_run(tmp_path: Path, name: str, base: str, data: Path) -> Path:
    config = {
        "base": base,
        "lora": {"r": 8, "alpha": 16, "dropout": 0.1},
        "data": {"train": str(data), "eval": str(data), "format": "completion", "max_length": 64},
        "train": {
            "max_steps": STEPS,
            "batch_size": 3,
            "grad_accum": 2,
            "lr": 5e-3,
            "precision": "fp32",
            "save_every": 2,
            "eval_every": 4,
            "keep_checkpoints": 2,
            "seed": 3,
        },
        "output": str(tmp_path / name),
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def _train(config: Path | None, *extra: str, **kwargs) -> subprocess.Popen:
    given = [str(config)] if config is not None else []
    return subprocess.Popen(
        [sys.executable, "-m", "lorakit.cli", "train", *given, "--no-progress", *extra],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def _adapter(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "adapter" / "adapter_model.safetensors")


def _losses(run: Path) -> list[tuple[int, float]]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r.get("loss", r.get("eval_loss"))) for r in lines]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    base = str(tiny_base(bases.lorakit_home() / "models" / "tiny-demo"))
    data = tmp / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    config = _write_run(tmp, "reference", base, data)
    out, err = _train(config).communicate(timeout=600)
    assert f"done: {STEPS} steps" in out, err
    return tmp, base, data


def _same_run(reference_dir: Path, resumed: Path) -> None:
    want, got = _adapter(reference_dir), _adapter(resumed)
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key
    assert _losses(resumed) == _losses(reference_dir)


def test_sigkill_at_any_moment_then_resume_gives_identical_adapter(reference):
    tmp, base, data = reference
    config = _write_run(tmp, "killed", base, data)
    run = tmp / "killed"
    process = _train(config)
    _wait_for(run / "checkpoints" / "step-000006", process)
    time.sleep(0.3)  # somewhere inside a later step, an evaluation or a checkpoint write
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (run / "adapter").exists()
    out, err = _train(config, "--resume", "auto").communicate(timeout=600)
    assert f"done: {STEPS} steps" in out, err
    _same_run(tmp / "reference", run)


def test_ctrl_c_finishes_the_step_saves_and_exits_130(reference):
    tmp, base, data = reference
    config = _write_run(tmp, "interrupted", base, data)
    run = tmp / "interrupted"
    process = _train(config)
    _wait_for(run / "checkpoints" / "step-000004", process)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 130, err
    message = [line for line in err.splitlines() if line.startswith("interrupted after step")]
    assert len(message) == 1 and message[0].endswith(f"Resume with: lorakit train --resume {run}")
    step = int(message[0].split()[3].rstrip(";"))
    assert 4 <= step < STEPS and (run / "checkpoints" / f"step-{step:06d}" / "trainer_state.pt").exists()
    out, err = _train(None, "--resume", str(run)).communicate(timeout=600)  # the printed command, as printed
    assert f"done: {STEPS} steps" in out, err
    _same_run(tmp / "reference", run)


def test_resume_with_a_changed_config_is_refused(reference, tmp_path):
    tmp, base, data = reference
    config = _write_run(tmp, "reference", base, data)
    newest = sorted((tmp / "reference" / "checkpoints").iterdir())[-1]
    out, err = _train(config, "--resume", str(newest), "--set", "train.batch_size=5").communicate(timeout=300)
    assert "the run was made with train.batch_size=3, the config now says 5" in err
    out, err = _train(config, "--resume", "auto").communicate(timeout=300)
    assert "this run already finished" in err and "nothing to resume" in err
