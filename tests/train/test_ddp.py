"""Data parallelism: ``torchrun --nproc_per_node=2`` (gloo on CPU) trains the same adapter as one process with
the same global batch, and only rank 0 writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
import yaml
from safetensors.torch import load_file

from lorakit.cli.quickstart import tiny_base
from lorakit.core import bases

ROWS = [
    {"prompt": f"Q{i}: colour of item {i}?" + " filler" * (i % 4), "completion": f" item {i} is {c}"}
    for i, c in enumerate(["red", "blue", "green", "black"] * 4)
]


def _config(tmp_path, name, base, data, batch_size, grad_accum=1):
    config = {
        "base": base,
        "lora": {"r": 8, "alpha": 16},
        "data": {"train": str(data), "eval": str(data), "format": "completion", "max_length": 64},
        "train": {
            "max_steps": 6,
            "batch_size": batch_size,
            "grad_accum": grad_accum,
            "lr": 5e-3,
            "precision": "fp32",
            "save_every": 3,
            "eval_every": 3,
            "seed": 1,
        },
        "output": str(tmp_path / name),
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _run(command, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_two_gloo_processes_train_the_same_adapter_as_one(tmp_path):
    base = str(tiny_base(bases.lorakit_home() / "models" / "tiny-demo"))
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    train = [sys.executable, "-m", "lorakit.cli", "train"]
    _run([*train, str(_config(tmp_path, "single", base, data, batch_size=4)), "--no-progress"], tmp_path)
    result = _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "lorakit.cli",
            "train",
            str(_config(tmp_path, "ddp", base, data, batch_size=2)),
            "--no-progress",
        ],
        tmp_path,
    )
    assert result.stdout.count("done: 6 steps") == 1  # only rank 0 reports and writes
    single = load_file(tmp_path / "single" / "adapter" / "adapter_model.safetensors")
    ddp = load_file(tmp_path / "ddp" / "adapter" / "adapter_model.safetensors")
    assert single.keys() == ddp.keys()
    moved = max(float(t.abs().max()) for k, t in single.items() if "lora_B" in k)
    assert moved > 1e-3  # training changed B, so equality below is not the trivial zero == zero
    for key in single:
        torch.testing.assert_close(ddp[key], single[key], rtol=1e-4, atol=1e-5)
    losses = lambda run: [
        json.loads(line).get("loss") for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()
    ]  # noqa: E731
    torch.testing.assert_close(
        torch.tensor([x for x in losses("ddp") if x]),
        torch.tensor([x for x in losses("single") if x]),
        rtol=1e-5,
        atol=1e-6,
    )
    meta = json.loads((tmp_path / "ddp" / "lorakit.json").read_text())
    assert meta["processes"] == 2
