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
    return subprocess.run([sys.executable, "-m", "lorakit.cli", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


def test_combine_registers_the_result_and_its_parents_when_a_registry_is_configured(tmp_path):
    for seed, name in ((1, "a"), (2, "b")):
        model = tiny_llama()
        lk.inject(model, lk.LoraConfig(r=4, targets=["q_proj", "v_proj"]))
        randomize_adapter(model, seed=seed)
        lk.save_adapter(model, tmp_path / name)
    env = {"LORAKIT_REGISTRY": f"sqlite:///{tmp_path / 'registry.db'}"}
    done = _cli("combine", str(tmp_path / "a"), str(tmp_path / "b"), "--method", "cat", "--out", str(tmp_path / "ab"), env=env)
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
