"""inspect: singular values through QR equal a dense SVD, effective and stable ranks, summaries, plot, CLI."""

from __future__ import annotations

import json

import pytest
import torch

import lorakit as lk
from lorakit.algebra import factor_svd, inspect, load, rank_for_energy
from lorakit.algebra.plot import plot_spectrum
from lorakit.core.files import write_adapter
from tests.helpers import randomize_adapter, run_cli, tiny_llama


@pytest.fixture
def adapter(tmp_path):
    model = tiny_llama()
    lk.inject(model, lk.LoraConfig(r=6, alpha=12, targets="all-linear"))
    randomize_adapter(model, seed=4)
    return lk.save_adapter(model, tmp_path / "adapter")


def test_singular_values_equal_a_dense_svd_of_scaled_BA(adapter):
    spectrum = inspect(adapter)
    modules = load(adapter).modules
    assert len(spectrum.modules) == len(modules) == 14
    for m in spectrum.modules:
        dense = modules[m.module].dense(torch.float64)  # s·B·A, (out, in)
        expected = torch.linalg.svdvals(dense)[: m.rank]
        assert torch.allclose(torch.tensor(m.singular_values, dtype=torch.float64), expected, rtol=1e-6, atol=1e-9), (
            m.module
        )
        assert m.frobenius == pytest.approx(float(dense.norm()), rel=1e-9)
        assert m.stable_rank == pytest.approx(float(dense.norm() ** 2 / expected[0] ** 2), rel=1e-9)


def test_factor_svd_reconstructs_the_product_and_has_orthonormal_factors():
    generator = torch.Generator().manual_seed(0)
    B, A = torch.randn(40, 5, generator=generator), torch.randn(5, 30, generator=generator)
    U, S, V = factor_svd(B, A, 0.5)
    assert torch.allclose(U @ torch.diag(S) @ V.T, 0.5 * (B.double() @ A.double()), atol=1e-10)
    assert torch.allclose(U.T @ U, torch.eye(5, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(V.T @ V, torch.eye(5, dtype=torch.float64), atol=1e-10)


def _planted(tmp_path, singular_values):
    """A one-module adapter whose ΔW has exactly ``singular_values`` (orthonormal U, V; scale 1)."""
    r = len(singular_values)
    generator = torch.Generator().manual_seed(1)
    U, _ = torch.linalg.qr(torch.randn(32, r, generator=generator))
    V, _ = torch.linalg.qr(torch.randn(32, r, generator=generator))
    tensors = {
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": V.T.contiguous(),
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": (
            U * torch.tensor(singular_values)
        ).contiguous(),
    }
    config = {"peft_type": "LORA", "r": r, "lora_alpha": r, "target_modules": ["q_proj"], "layers_to_transform": [0]}
    return write_adapter(tmp_path / "planted", config, tensors, {})


def test_effective_rank_and_suggestion_follow_the_energy(tmp_path):
    # energies 16, 9, 4, 1, 0.25, 0.01 of 30.26: top-2 keep 82.6%, top-3 95.8%, top-4 99.1%
    path = _planted(tmp_path, [4.0, 3.0, 2.0, 1.0, 0.5, 0.1])
    (m,) = inspect(path, suggest_energy=0.95).modules
    assert m.effective_rank == {"0.9": 3, "0.99": 4}
    assert m.suggested_rank == 3
    assert m.kind == "q" and m.layer == 0
    assert m.energy[-1] == pytest.approx(1.0)
    assert rank_for_energy(torch.tensor([4.0, 3.0, 2.0, 1.0, 0.5, 0.1]), 1.0) == 6
    assert rank_for_energy(torch.zeros(3), 0.9) == 0


def test_summaries_group_by_layer_and_kind(adapter):
    spectrum = inspect(adapter)
    assert [g.name for g in spectrum.by_layer] == ["0", "1"]
    assert [g.name for g in spectrum.by_kind] == ["q", "k", "v", "o", "gate", "up", "down"]
    for group in spectrum.by_kind:
        members = [m for m in spectrum.modules if m.kind == group.name]
        assert group.modules == 2
        assert group.frobenius == pytest.approx(sum(m.frobenius**2 for m in members) ** 0.5)
    assert spectrum.total_frobenius == pytest.approx(sum(g.frobenius**2 for g in spectrum.by_layer) ** 0.5)


def test_plot_is_written_as_png(adapter, tmp_path):
    path = plot_spectrum(inspect(adapter), tmp_path / "plots" / "spectrum.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


def test_cli_inspect_prints_tables_json_and_plot(adapter, tmp_path, capsys, monkeypatch):
    code, out, err = run_cli(capsys, monkeypatch, "inspect", str(adapter), "--plot", str(tmp_path / "s.png"))
    assert code == 0, err
    assert "model.layers.1.mlp.down_proj" in out and "by module kind" in out
    assert "lorakit compress" in out and (tmp_path / "s.png").exists()
    code, out, _ = run_cli(capsys, monkeypatch, "inspect", str(adapter), "--json")
    report = json.loads(out)
    assert len(report["modules"]) == 14 and report["modules"][0]["effective_rank"].keys() == {"0.9", "0.99"}
    code, _, err = run_cli(capsys, monkeypatch, "inspect", str(tmp_path / "nope"))
    assert code == 2 and "adapter directory not found" in err
