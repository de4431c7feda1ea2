"""Combining adapters: exactness of cat/svd, agreement with PEFT's add_weighted_adapter, determinism, lineage,
errors.
"""

from __future__ import annotations

import json

import pytest
import torch

import lorakit as lk
from lorakit.algebra import combine, load
from lorakit.core.errors import AdapterMismatchError, BaseMismatchError, ConfigError
from lorakit.core.model import lora_layers
from tests.helpers import logits, randomize_adapter, tiny_llama, token_batch

WEIGHTS = [0.7, -0.4]
ATOL = 1e-5


def _adapter(path, r, alpha, targets, seed, model_seed=0):
    model = tiny_llama(seed=model_seed)
    lk.inject(model, lk.LoraConfig(r=r, alpha=alpha, targets=targets))
    randomize_adapter(model, seed=seed, scale=0.2)
    return lk.save_adapter(model, path)


@pytest.fixture
def pair(tmp_path):
    a = _adapter(tmp_path / "a", 4, 8, ["q_proj", "v_proj", "down_proj", "embed_tokens"], seed=1)
    b = _adapter(tmp_path / "b", 6, 3, ["q_proj", "v_proj", "down_proj", "embed_tokens"], seed=2)
    return a, b


@pytest.fixture
def same_rank_pair(tmp_path):
    a = _adapter(tmp_path / "a4", 4, 8, ["q_proj", "v_proj", "up_proj"], seed=1)
    b = _adapter(tmp_path / "b4", 4, 4, ["q_proj", "v_proj", "up_proj"], seed=2)
    return a, b


def _deltas(path) -> dict[str, torch.Tensor]:
    return {name: m.dense(torch.float64) for name, m in load(path).modules.items()}


def _peft_combined(paths, weights, method, **kwargs):
    """PEFT's add_weighted_adapter on the same files: (model with the new adapter active, its ΔW per module)."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(tiny_llama(), str(paths[0]), adapter_name="p0")
    for i, path in enumerate(paths[1:], start=1):
        model.load_adapter(str(path), adapter_name=f"p{i}")
    model.add_weighted_adapter([f"p{i}" for i in range(len(paths))], weights, "mix", combination_type=method, **kwargs)
    model.set_adapter("mix")
    model.eval()
    deltas = {}
    for name, module in model.base_model.model.named_modules():
        if hasattr(module, "get_delta_weight") and (
            "mix" in getattr(module, "lora_A", {}) or "mix" in getattr(module, "lora_embedding_A", {})
        ):
            delta = module.get_delta_weight("mix").double()
            deltas[name] = delta.T if "embed" in name else delta  # PEFT's embedding delta is (n, dim); B·A is (dim, n)
    return model, deltas


def _ours(path):
    model = tiny_llama()
    lk.load_adapter(model, path)
    return model


def _weighted_sum(paths, weights):
    total: dict[str, torch.Tensor] = {}
    for path, w in zip(paths, weights):
        for name, delta in _deltas(path).items():
            total[name] = total.get(name, 0) + w * delta
    return total


def test_cat_is_exact_and_matches_peft(pair, tmp_path):
    result = combine(pair, tmp_path / "cat", weights=WEIGHTS, method="cat")
    assert set(result.ranks.values()) == {10}
    expected = _weighted_sum(pair, WEIGHTS)
    ours = _deltas(result.path)
    assert ours.keys() == expected.keys()
    for name in expected:
        assert torch.allclose(ours[name], expected[name], atol=1e-6, rtol=1e-5), name
    peft_model, peft_deltas = _peft_combined(pair, WEIGHTS, "cat")
    for name, delta in peft_deltas.items():
        assert torch.allclose(ours[name], delta, atol=1e-6), name
    ids = token_batch()
    assert (logits(_ours(result.path), ids) - logits(peft_model, ids)).abs().max() <= ATOL


def test_svd_at_full_rank_is_exact_and_at_rank_k_is_the_best_rank_k_approximation(pair, tmp_path):
    full = combine(pair, tmp_path / "full", weights=WEIGHTS, method="svd", rank=10)
    expected = _weighted_sum(pair, WEIGHTS)
    for name, delta in _deltas(full.path).items():
        assert torch.allclose(delta, expected[name], atol=1e-5), name
    low = combine(pair, tmp_path / "low", weights=WEIGHTS, method="svd", rank=3)
    assert set(low.ranks.values()) == {3}
    for name, delta in _deltas(low.path).items():
        U, S, Vh = torch.linalg.svd(expected[name], full_matrices=False)
        best = U[:, :3] @ torch.diag(S[:3]) @ Vh[:3]  # Eckart–Young: the best rank-3 approximation
        assert torch.allclose(delta, best, atol=1e-5), name
        assert low.kept_energy[name] == pytest.approx(float((S[:3] ** 2).sum() / (S**2).sum()), rel=1e-6)


def test_svd_matches_peft(pair, tmp_path):
    result = combine(pair, tmp_path / "svd", weights=WEIGHTS, method="svd", rank=3)
    peft_model, peft_deltas = _peft_combined(pair, WEIGHTS, "svd", svd_rank=3)
    ours = _deltas(result.path)
    for name, delta in peft_deltas.items():
        assert torch.allclose(ours[name], delta, atol=1e-5), name
    ids = token_batch()
    assert (logits(_ours(result.path), ids) - logits(peft_model, ids)).abs().max() <= ATOL


def test_linear_matches_peft(same_rank_pair, tmp_path):
    result = combine(same_rank_pair, tmp_path / "linear", weights=WEIGHTS, method="linear")
    assert set(result.ranks.values()) == {4}
    peft_model, peft_deltas = _peft_combined(same_rank_pair, WEIGHTS, "linear")
    ours = _deltas(result.path)
    for name, delta in peft_deltas.items():
        assert torch.allclose(ours[name], delta, atol=1e-6), name
    ids = token_batch()
    assert (logits(_ours(result.path), ids) - logits(peft_model, ids)).abs().max() <= ATOL


@pytest.mark.parametrize("method", ["ties", "magnitude_prune"])
def test_ties_and_magnitude_prune_match_peft_svd_variants(pair, tmp_path, method):
    result = combine(pair, tmp_path / method, weights=[0.7, 0.4], method=method, density=0.4, rank=4)
    _, peft_deltas = _peft_combined(pair, [0.7, 0.4], f"{method}_svd", density=0.4, svd_rank=4)
    ours = _deltas(result.path)
    for name, delta in peft_deltas.items():
        assert torch.allclose(ours[name], delta, atol=1e-4, rtol=1e-4), name


def test_ties_keeps_only_entries_agreeing_with_the_elected_sign():
    from lorakit.algebra.prune import merge_elementwise

    a = torch.tensor([[3.0, -1.0], [0.5, 2.0]])
    b = torch.tensor([[-1.0, -2.0], [4.0, -0.1]])
    merged = merge_elementwise("ties", [a, b], [1.0, 1.0], density=1.0)
    # elected signs (total): +, -, +, + -> disjoint means: 3, (-1-2)/2, (0.5+4)/2, 2
    assert torch.allclose(merged, torch.tensor([[3.0, -1.5], [2.25, 2.0]]))


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties"])
def test_dare_is_deterministic_under_a_seed(pair, tmp_path, method):
    runs = [
        combine(pair, tmp_path / f"{method}{i}", weights=WEIGHTS, method=method, density=0.5, seed=seed)
        for i, seed in enumerate((7, 7, 8))
    ]
    first, again, other = (_deltas(r.path) for r in runs)
    assert all(torch.equal(first[n], again[n]) for n in first)
    assert any(not torch.allclose(first[n], other[n]) for n in first)


def test_lineage_is_recorded(pair, tmp_path):
    combine(pair, tmp_path / "out", weights=WEIGHTS, method="dare_ties", density=0.5, seed=3)
    meta = json.loads((tmp_path / "out" / "lorakit.json").read_text())
    lineage = meta["lineage"]
    assert lineage["method"] == "dare_ties"
    assert lineage["params"] == {"weights": WEIGHTS, "rank": None, "density": 0.5, "seed": 3, "sign_method": "total"}
    import hashlib

    for parent, path, weight in zip(lineage["parents"], pair, WEIGHTS):
        assert parent["path"] == str(path.resolve()) and parent["weight"] == weight
        assert parent["sha256"] == hashlib.sha256((path / "adapter_model.safetensors").read_bytes()).hexdigest()
    assert meta["base"]["fingerprint"] == load(pair[0]).files.base_fingerprint


def test_disjoint_targets_count_as_zero_and_are_reported(tmp_path):
    a = _adapter(tmp_path / "qa", 4, 8, ["q_proj"], seed=1)
    b = _adapter(tmp_path / "kb", 4, 8, ["k_proj"], seed=2)
    result = combine([a, b], tmp_path / "out", weights=[1.0, 0.5], method="cat")
    assert len(result.notes) == 2 and "zero update" in result.notes[0]
    expected = _weighted_sum([a, b], [1.0, 0.5])
    model = _ours(result.path)  # the combined config selects exactly the union of modules
    ids = token_batch()
    reference = tiny_llama()
    lk.load_adapter(reference, a, name="a")
    lk.load_adapter(reference, b, name="b")
    for _, layer in lora_layers(reference):
        if "b" in layer.scaling:
            layer.scaling["b"] *= 0.5
    lk.set_active(reference, ["a", "b"])
    assert (logits(model, ids) - logits(reference, ids)).abs().max() <= ATOL
    assert set(_deltas(result.path)) == set(expected)


def test_adapters_of_different_bases_are_refused_naming_both(tmp_path):
    a = _adapter(tmp_path / "a", 4, 8, ["q_proj"], seed=1, model_seed=0)
    b = _adapter(tmp_path / "b", 4, 8, ["q_proj"], seed=2, model_seed=5)
    with pytest.raises(BaseMismatchError) as err:
        combine([a, b], tmp_path / "out", method="cat")
    assert str(a) in str(err.value) and str(b) in str(err.value) and "fingerprint" in str(err.value)


def test_bad_arguments_give_their_errors(pair, tmp_path):
    with pytest.raises(ConfigError, match="3 weight"):
        combine(pair, tmp_path / "o", weights=[1, 2, 3])
    with pytest.raises(ConfigError, match="cat.*svd"):
        combine(pair, tmp_path / "o", method="linear")
    with pytest.raises(ConfigError, match="density"):
        combine(pair, tmp_path / "o", method="ties")
    with pytest.raises(ConfigError, match="method must be one of"):
        combine(pair, tmp_path / "o", method="average")
    with pytest.raises(ConfigError, match="rank"):
        combine(pair, tmp_path / "o", method="cat", rank=4)
    assert not (tmp_path / "o").exists()


def test_modules_of_different_shapes_are_refused(tmp_path):
    from lorakit.core.files import read_adapter, write_adapter

    a = _adapter(tmp_path / "a", 4, 8, ["q_proj"], seed=1)
    files = read_adapter(a)
    key = next(k for k in files.tensors if k.endswith("lora_B.weight"))
    files.tensors[key] = torch.zeros(48, 4)
    meta = {k: v for k, v in files.meta.items() if k != "base"}
    write_adapter(tmp_path / "wide", files.raw_config, files.tensors, meta)
    with pytest.raises(AdapterMismatchError, match="different base models"):
        combine([a, tmp_path / "wide"], tmp_path / "o", method="cat")


def test_registry_reads_the_lineage_of_a_combination_of_registered_adapters(pair, tmp_path):
    from lorakit.registry import Registry

    with Registry() as registry:  # SQLite under this test's LORAKIT_HOME
        registry.add(pair[0], name="alpha")
        registry.add(pair[1], name="beta")
    result = combine(["registry:alpha@1", "registry:beta@1"], tmp_path / "mix", weights=WEIGHTS, method="svd", rank=4)
    parents = json.loads((result.path / "lorakit.json").read_text())["lineage"]["parents"]
    assert [p["registry"] for p in parents] == ["alpha@1", "beta@1"]
    with Registry() as registry:
        registry.add(result.path, name="mix")
        tree = registry.lineage("mix@1")["tree"]
    assert sorted(p["ref"] for p in tree["parents"]) == ["alpha@1", "beta@1"]
    assert {p["method"] for p in tree["parents"]} == {"svd"}
    assert sorted(p["weight"] for p in tree["parents"]) == sorted(WEIGHTS)
