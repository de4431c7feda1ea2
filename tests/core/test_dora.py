"""DoRA: magnitude ⊙ normalised direction; fresh = base, merge exact, PEFT interop both ways, rows routed."""

from __future__ import annotations

import pytest
import torch

import lorakit as lk
from lorakit.core.errors import ConfigError
from tests.helpers import logits, randomize_adapter, tiny_gpt2, tiny_llama, token_batch

ATOL = 1e-5


def _dora(model, **kwargs):
    lk.inject(model, lk.LoraConfig(r=4, alpha=8, use_dora=True, **kwargs))
    return model


def test_fresh_dora_adapter_reproduces_base(llama):
    ids = token_batch()
    base = logits(llama, ids)
    _dora(llama)
    layer = llama.model.layers[0].self_attn.q_proj
    assert torch.allclose(layer.lora_magnitude["default"], layer.base_layer.weight.norm(dim=1))
    assert (logits(llama, ids) - base).abs().max() <= ATOL


def test_dora_output_is_magnitude_times_normalised_direction():
    layer_model = torch.nn.Sequential(torch.nn.Linear(16, 8, bias=True))
    lk.inject(layer_model, lk.LoraConfig(r=2, alpha=4, targets=["0"], use_dora=True))
    randomize_adapter(layer_model, scale=0.3)
    layer = layer_model[0]
    x = torch.randn(3, 16)
    V = layer.base_layer.weight + layer.scaling["default"] * layer.lora_B["default"] @ layer.lora_A["default"]
    W = layer.lora_magnitude["default"].view(-1, 1) * V / V.norm(dim=1, keepdim=True)
    expected = x @ W.T + layer.base_layer.bias
    assert (layer_model(x) - expected).abs().max() <= ATOL


@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2-conv1d"])
def test_dora_merge_equals_unmerged_and_unmerge_restores(make):
    model = _dora(make())
    randomize_adapter(model)
    ids = token_batch()
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer" in n}
    unmerged = logits(model, ids)
    lk.merge(model)
    assert (logits(model, ids) - unmerged).abs().max() <= ATOL
    lk.unmerge(model)
    for name, p in model.named_parameters():
        if name in weights:
            assert torch.allclose(p, weights[name], atol=1e-6), name
    assert (logits(model, ids) - unmerged).abs().max() <= ATOL


def test_dora_gradients_reach_magnitude_but_not_through_the_norm(llama):
    _dora(llama, targets=["q_proj"])
    randomize_adapter(llama)
    ids = token_batch()
    llama.train()
    llama(input_ids=ids, labels=ids).loss.backward()
    layer = llama.model.layers[0].self_attn.q_proj
    assert layer.lora_magnitude["default"].grad.abs().sum() > 0
    assert layer.lora_A["default"].grad.abs().sum() > 0


def test_dora_round_trip_and_peft_loads_ours(tmp_path):
    from peft import PeftModel

    model = _dora(tiny_llama())
    randomize_adapter(model)
    ids = token_batch()
    lk.save_adapter(model, tmp_path / "a")
    expected = logits(model, ids)
    assert (logits(lk.load_adapter(tiny_llama(), tmp_path / "a"), ids) - expected).abs().max() <= ATOL
    peft_model = PeftModel.from_pretrained(tiny_llama(), str(tmp_path / "a")).eval()
    with torch.no_grad():
        assert (peft_model(input_ids=ids).logits - expected).abs().max() <= ATOL


@pytest.mark.parametrize(
    "make, kwargs",
    [
        (tiny_llama, dict(target_modules="all-linear")),
        (tiny_gpt2, dict(target_modules=["c_attn", "c_fc"], fan_in_fan_out=True, use_rslora=True)),
    ],
    ids=["llama", "gpt2-conv1d-rslora"],
)
def test_peft_dora_adapter_loads_in_lorakit_with_same_outputs(tmp_path, make, kwargs):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(make(), LoraConfig(r=4, lora_alpha=8, use_dora=True, init_lora_weights=False, **kwargs))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_magnitude_vector" in name:
                p.mul_(1.1)
    peft_model.eval().save_pretrained(str(tmp_path / "peft"))
    ids = token_batch()
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
    model = lk.load_adapter(make(), tmp_path / "peft")
    assert (logits(model, ids) - expected).abs().max() <= ATOL


def test_row_routing_with_dora_matches_each_adapter_alone(llama):
    ids = token_batch(batch=3)
    _dora(llama)
    randomize_adapter(llama, "default")
    alone = logits(llama, ids)
    with lk.disabled(llama):
        base = logits(llama, ids)
    with lk.row_adapters(llama, ["default", None, "default"]):
        mixed = logits(llama, ids)
    assert (mixed[[0, 2]] - alone[[0, 2]]).abs().max() <= ATOL
    assert (mixed[1] - base[1]).abs().max() <= ATOL


def test_dora_on_an_embedding_is_a_config_error(llama):
    with pytest.raises(ConfigError, match="embed_tokens"):
        lk.inject(llama, lk.LoraConfig(r=4, targets=["q_proj", "embed_tokens"], use_dora=True))
    assert not lk.adapter_names(llama)
