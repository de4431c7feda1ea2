"""Commands that make adapters register them (with lineage) when a registry is configured."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import lorakit as lk
from lorakit.cli.serve import parse_adapter
from tests.helpers import randomize_adapter, tiny_llama


def _cli(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lorakit.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )


def test_combine_registers_the_result_and_its_parents_when_a_registry_is_configured(tmp_path):
    for seed, name in ((1, "a"), (2, "b")):
        model = tiny_llama()
        lk.inject(model, lk.LoraConfig(r=4, targets=["q_proj", "v_proj"]))
        randomize_adapter(model, seed=seed)
        lk.save_adapter(model, tmp_path / name)
    env = {"LORAKIT_REGISTRY": f"sqlite:///{tmp_path / 'registry.db'}"}
    done = _cli(
        "combine", str(tmp_path / "a"), str(tmp_path / "b"), "--method", "cat", "--out", str(tmp_path / "ab"), env=env
    )
    assert done.returncode == 0, done.stderr
    assert "registered as" in done.stdout
    lineage = _cli("registry", "lineage", "ab", "--json", env=env)
    assert lineage.returncode == 0, lineage.stderr
    text = json.dumps(json.loads(lineage.stdout))
    assert '"ref": "a@1"' in text and '"ref": "b@1"' in text and '"method": "cat"' in text


def test_combine_without_a_registry_registers_nothing(tmp_path):
    model = tiny_llama()
    lk.inject(model, lk.LoraConfig(r=4, targets=["q_proj"]))
    lk.save_adapter(model, tmp_path / "a")
    env = {"LORAKIT_REGISTRY": ""}
    done = _cli("combine", str(tmp_path / "a"), str(tmp_path / "a"), "--out", str(tmp_path / "aa"), env=env)
    assert done.returncode == 0, done.stderr
    assert "registered" not in done.stdout


def test_serve_adapter_option_accepts_paths_and_registry_references():
    assert parse_adapter("support=runs/x/adapter") == ("support", "runs/x/adapter")
    assert parse_adapter("support@production") == ("support", "registry:support@production")
    assert parse_adapter("s=registry:support@3") == ("s", "registry:support@3")


def test_lorakit_train_registers_its_adapter_when_a_registry_is_configured(tmp_path):
    import yaml

    from lorakit.cli.quickstart import tiny_base

    rows = [{"prompt": f"Q{i}: colour?", "completion": f" {c}"} for i, c in enumerate(["red", "blue"] * 4)]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    config = {
        "base": str(tiny_base(tmp_path / "base")),
        "lora": {"r": 4, "alpha": 8},
        "data": {"train": str(tmp_path / "train.jsonl"), "format": "completion", "max_length": 32},
        "train": {"max_steps": 2, "batch_size": 4, "precision": "fp32", "eval_every": 10, "save_every": 10},
        "output": str(tmp_path / "run"),
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    env = {"LORAKIT_REGISTRY": f"sqlite:///{tmp_path / 'registry.db'}", "OMP_NUM_THREADS": "1"}
    done = _cli("train", str(tmp_path / "run.yaml"), "--no-progress", env=env)
    assert done.returncode == 0, done.stderr
    assert "registered as" in done.stdout
    trained_on = _cli("registry", "trained-on", str(tmp_path / "train.jsonl"), "--json", env=env)
    assert trained_on.returncode == 0, trained_on.stderr
    assert str(tmp_path / "run" / "adapter") in trained_on.stdout
