"""The objectives beyond SFT in real processes: a guarded SFT run and a DPO run killed with SIGKILL and resumed end
with the same adapter and per-step metrics as uninterrupted runs (and the resumed guard reads the base's cached
distributions instead of regenerating them); the drift guard under ``torchrun`` (2 processes, gloo) trains the same
adapter as one process with the same global batch."""

from __future__ import annotations

import json
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
from lorakit.train.guard_cache import CACHE_FILE
from tests.train.test_resume import _env, _same_run, _train, _wait_for

STEPS = 8
ROWS = [
    {"prompt": f"Q{i}: colour of item {i}?", "completion": f" item {i} is {c}"}
    for i, c in enumerate(["red", "blue", "green", "black"] * 2)
]
PAIRS = [
    {"prompt": f"Q{i}: colour of item {i}?", "chosen": f" item {i} is {c}", "rejected": f" no idea about {i}"}
    for i, c in enumerate(["red", "blue", "green", "black"] * 2)
]
GUARD_ROWS = [
    {"prompt": "Write a short note to a neighbour."},
    {"prompt": "Name three fruits."},
    {"text": "The river rose after a week of rain, and the ferry stopped running."},
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("objectives")
    for name, rows in (("sft.jsonl", ROWS), ("pairs.jsonl", PAIRS), ("guard.jsonl", GUARD_ROWS)):
        (tmp / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp, str(tiny_base(bases.lorakit_home() / "models" / "tiny-demo"))


def _config(tmp: Path, base: str, objective: str, name: str, **train) -> Path:
    settings = {
        "max_steps": STEPS,
        "batch_size": 2,
        "grad_accum": 2,
        "lr": 5e-3,
        "precision": "fp32",
        "save_every": 2,
        "eval_every": 4,
        "keep_checkpoints": 2,
        "seed": 3,
        **train,
    }
    # dropout only for DPO: the guarded runs are also compared with a torchrun run, whose masks differ
    config = {
        "base": base,
        "lora": {"r": 8, "alpha": 16, "dropout": 0.1 if objective == "dpo" else 0.0},
        "output": str(tmp / name),
    }
    if objective == "dpo":
        config.update(
            data={"train": str(tmp / "pairs.jsonl"), "eval": str(tmp / "pairs.jsonl"), "max_length": 64},
            train={**settings, "objective": "dpo"},
            dpo={"beta": 0.2, "label_smoothing": 0.1},
        )
    else:
        config.update(
            data={
                "train": str(tmp / "sft.jsonl"),
                "eval": str(tmp / "sft.jsonl"),
                "format": "completion",
                "max_length": 64,
            },
            train=settings,
            drift_guard={
                "weight": 2.0,
                "data": str(tmp / "guard.jsonl"),
                "batch_size": 2,
                "top_k": 8,
                "respond_tokens": 4,
                "batch_weight": 0.5,
                "schedule": "linear",
            },
        )
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _records(run: Path) -> list[dict]:
    skip = {"tokens_per_s", "step_s"}  # wall-clock fields
    return [
        {k: v for k, v in json.loads(line).items() if k not in skip}
        for line in (run / "metrics.jsonl").read_text().splitlines()
    ]


@pytest.fixture(scope="module")
def reference(files):
    """The uninterrupted run of each objective (one process), made on first use."""
    tmp, base = files
    done = {}

    def run(objective: str) -> Path:
        if objective not in done:
            out, err = _train(_config(tmp, base, objective, f"{objective}-reference")).communicate(timeout=600)
            assert f"done: {STEPS} steps" in out, err
            done[objective] = tmp / f"{objective}-reference"
        return done[objective]

    return run


@pytest.mark.parametrize("objective", ["guarded_sft", "dpo"])
def test_sigkill_then_resume_is_exact(files, reference, objective):
    tmp, base = files
    expected = reference(objective)
    config = _config(tmp, base, objective, f"{objective}-killed")
    run = tmp / f"{objective}-killed"
    process = _train(config)
    _wait_for(run / "checkpoints" / "step-000004", process)
    time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL and not (run / "adapter").exists()
    cache = run / CACHE_FILE
    before = cache.stat() if cache.exists() else None
    out, err = _train(config, "--resume", "auto").communicate(timeout=600)
    assert f"done: {STEPS} steps" in out, err
    _same_run(expected, run)  # identical adapter tensors and per-step losses
    assert _records(run) == _records(expected)  # and every logged term
    if objective == "guarded_sft":
        after = cache.stat()  # the resumed run read the base's distributions, it did not write them again
        assert before is not None and (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
        steps = [r for r in _records(run) if "loss" in r]
        assert steps[0]["drift_kl"] == 0.0 and steps[-1]["drift_kl"] > 0 and steps[-1]["batch_kl"] > 0
    else:
        assert not cache.exists()


def test_guard_under_two_gloo_processes_trains_the_same_adapter_as_one(files, reference):
    tmp, base = files
    single = reference("guarded_sft")  # batch_size 2 × grad_accum 2: the same global batch as 2 × 2 processes
    ddp = _config(tmp, base, "guarded_sft", "guard-ddp", batch_size=2, grad_accum=1)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "lorakit.cli",
            "train",
            str(ddp),
            "--no-progress",
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp,
    )
    assert done.returncode == 0, "\n".join(line for line in done.stderr.splitlines() if "rror" in line)
    assert done.stdout.count(f"done: {STEPS} steps") == 1
    one, two = (load_file(run / "adapter" / "adapter_model.safetensors") for run in (single, tmp / "guard-ddp"))
    assert one.keys() == two.keys()
    assert max(float(t.abs().max()) for k, t in one.items() if "lora_B" in k) > 1e-3
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=1e-5)
    steps = {run: [r for r in _records(run) if "loss" in r] for run in (single, tmp / "guard-ddp")}
    for key in ("loss", "drift_kl", "batch_kl", "task_loss"):  # task_loss is left out where it equals loss
        value = lambda r: r.get(key, r["loss"])  # noqa: E731
        want = torch.tensor([value(r) for r in steps[single]])
        torch.testing.assert_close(
            torch.tensor([value(r) for r in steps[tmp / "guard-ddp"]]), want, rtol=1e-4, atol=1e-6
        )
    assert steps[single][-1]["drift_kl"] > 0
    assert json.loads((tmp / "guard-ddp" / "lorakit.json").read_text())["objective"] == "sft+drift_guard"
