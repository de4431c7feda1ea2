"""compress: lossless at energy 1.0, ≥ the asked energy per module, minimal ranks, rank_pattern that PEFT loads,
the output change measured as KL, and the CLI report."""

from __future__ import annotations

import json

import pytest
import torch

import lorakit as lk
from lorakit.algebra import compress, load, output_kl
from lorakit.core.errors import ConfigError
from lorakit.core.model import lora_layers
from tests.algebra.test_export import adapter_on, tiny_base_dir
from tests.helpers import logits, randomize_adapter, run_cli, tiny_llama, token_batch


@pytest.fixture
def adapter(tmp_path):
    """Rank 8 with a decaying spectrum, as trained adapters have: B's columns shrink geometrically."""
    model = tiny_llama()
    lk.inject(model, lk.LoraConfig(r=8, alpha=16, targets="all-linear"))
    randomize_adapter(model, seed=5)
    with torch.no_grad():
        for _, layer in lora_layers(model):
            layer.lora_B["default"].mul_(0.6 ** torch.arange(8.0))
    return lk.save_adapter(model, tmp_path / "adapter")


def _deltas(path):
    return {name: m.dense(torch.float64) for name, m in load(path).modules.items()}


def test_energy_one_is_lossless(adapter, tmp_path):
    report = compress(adapter, tmp_path / "full", energy=1.0)
    before, after = _deltas(adapter), _deltas(report.path)
    for name in before:
        assert torch.allclose(after[name], before[name], atol=1e-6, rtol=1e-5), name
    assert report.max_relative_error < 1e-6
    original, compressed = tiny_llama(), tiny_llama()
    lk.load_adapter(original, adapter)
    lk.load_adapter(compressed, report.path)
    ids = token_batch()
    assert (logits(original, ids) - logits(compressed, ids)).abs().max() <= 1e-5


def test_energy_keeps_at_least_that_fraction_per_module_at_the_smallest_rank(adapter, tmp_path):
    report = compress(adapter, tmp_path / "c90", energy=0.9)
    before, after = _deltas(adapter), _deltas(report.path)
    ranks = {m.module: m.rank_after for m in report.modules}
    assert max(ranks.values()) < 8 and len(set(ranks.values())) >= 1
    for name, delta in before.items():
        S = torch.linalg.svdvals(delta)
        energy = torch.cumsum(S**2, 0) / (S**2).sum()
        k = ranks[name]
        assert energy[k - 1] >= 0.9 and (k == 1 or energy[k - 2] < 0.9), name  # enough, and no smaller rank is
        kept = (after[name] ** 2).sum() / (delta**2).sum()
        assert kept >= 0.9 - 1e-9, name
        error = (after[name] - delta).norm() / delta.norm()
        assert float(error) == pytest.approx(float((1 - energy[k - 1]).sqrt()), rel=1e-4, abs=1e-7)  # Eckart–Young
    assert report.bytes_after < report.bytes_before


def test_per_module_ranks_load_in_peft_and_lorakit_alike(adapter, tmp_path):
    from peft import PeftModel

    report = compress(adapter, tmp_path / "c", energy=0.8)
    config = json.loads((report.path / "adapter_config.json").read_text())
    ranks = {m.module: m.rank_after for m in report.modules}
    assert len(set(ranks.values())) > 1 and config["rank_pattern"]
    assert all(config["alpha_pattern"][k] == v for k, v in config["rank_pattern"].items())
    ours = tiny_llama()
    lk.load_adapter(ours, report.path)
    theirs = PeftModel.from_pretrained(tiny_llama(), str(report.path)).eval()
    ids = token_batch()
    assert (logits(ours, ids) - logits(theirs, ids)).abs().max() <= 1e-5
    meta = json.loads((report.path / "lorakit.json").read_text())
    assert meta["lineage"]["method"] == "compress" and meta["lineage"]["params"] == {"energy": 0.8}


def test_fixed_rank_and_bad_arguments(adapter, tmp_path):
    report = compress(adapter, tmp_path / "r2", rank=2)
    assert {m.rank_after for m in report.modules} == {2}
    assert json.loads((report.path / "adapter_config.json").read_text())["r"] == 2
    with pytest.raises(ConfigError, match="exactly one"):
        compress(adapter, tmp_path / "x", energy=0.9, rank=2)
    with pytest.raises(ConfigError, match="energy"):
        compress(adapter, tmp_path / "x", energy=1.5)


def test_output_kl_is_zero_when_lossless_and_grows_with_compression(adapter, tmp_path):
    model = tiny_llama()
    ids = token_batch()
    lossless = compress(adapter, tmp_path / "full", energy=1.0).path
    coarse = compress(adapter, tmp_path / "coarse", rank=1).path
    assert abs(output_kl(model, adapter, lossless, ids)) < 1e-6  # fp32 rounding only
    assert output_kl(model, adapter, coarse, ids) > 1e-4
    assert not list(lora_layers(model))  # the model is given back without adapters


def test_cli_compress_reports_sizes_errors_and_kl_on_a_sample(tmp_path, capsys, monkeypatch):
    base = tiny_base_dir(tmp_path / "base")
    adapter = adapter_on(base, tmp_path / "a", ["q_proj", "v_proj", "up_proj"], seed=3, r=8)
    code, out, err = run_cli(capsys, monkeypatch, "compress", str(adapter), "--rank", "3", "--out", str(tmp_path / "c"))
    assert code == 0, err
    assert "8 → 3" in out and "MB" in out and "KL(original ‖ compressed)" in out
    code, _, err = run_cli(capsys, monkeypatch, "compress", str(adapter), "--out", str(tmp_path / "d"))
    assert code == 2 and "exactly one of energy" in err
