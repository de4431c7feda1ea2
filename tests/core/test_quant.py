"""QLoRA: NF4 (double-quantised) and int8 bases under LoRA adapters; gradients against a dequantised reference."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lorakit as lk
from lorakit.core import quant
from lorakit.core.errors import ConfigError
from lorakit.core.merge_quantized import merge_quantized
from tests.helpers import logits, randomize_adapter, tiny_bert, tiny_llama, token_batch


def _nf4_llama(compute_dtype=torch.float32):
    return quant.quantize_model(tiny_llama(hidden=64), "nf4", compute_dtype=compute_dtype)


def _dequantised_copy(quantised: nn.Module, make) -> nn.Module:
    """A float model of the same architecture whose linear weights are the dequantised NF4 weights."""
    reference = make()
    for name, module in quantised.named_modules():
        if quant.is_quantized(module):
            target = reference.get_submodule(name)
            target.weight.data.copy_(quant.dequantize(module))
            if module.bias is not None:
                target.bias.data.copy_(module.bias.data)
    return reference


def test_every_linear_but_the_head_becomes_double_quantised_nf4():
    model = _nf4_llama()
    kinds = {type(m).__name__ for n, m in model.named_modules() if n.endswith(("_proj",))}
    assert kinds == {"Linear4bit"} and type(model.lm_head) is nn.Linear
    state = model.model.layers[0].mlp.up_proj.weight.quant_state
    assert state.quant_type == "nf4" and state.nested and state.blocksize == 64


def test_nf4_bytes_with_constants_are_at_most_0_135_of_fp32():
    model = quant.quantize_model(nn.Sequential(nn.Linear(1024, 1024), nn.Linear(1024, 1024)), "nf4")
    quantised, fp32 = quant.quantized_footprint(model)
    assert quantised / fp32 <= 0.135
    assert quantised / fp32 > 4 / 32


@pytest.mark.parametrize("make", [lambda: tiny_llama(hidden=64), lambda: tiny_bert()], ids=["llama", "bert-biased"])
def test_nf4_lora_loss_and_gradients_match_dequantised_fp32_reference(make):
    """Gradients flow through bitsandbytes' 4-bit matmul to x (the LoRA path) exactly as through W = deq(W_q)."""
    torch.manual_seed(0)
    model = quant.quantize_model(make(), "nf4", compute_dtype=torch.float32)
    reference = _dequantised_copy(model, make)
    ids = token_batch(vocab=96)
    for m in (model, reference):
        lk.inject(m, lk.LoraConfig(r=4, alpha=8, targets="all-linear"))
        randomize_adapter(m, scale=0.05)  # eval mode: BERT's dropout would differ between the two models
    kwargs = dict(labels=ids) if hasattr(model, "lm_head") else dict(labels=torch.tensor([0, 1]))
    loss = model(input_ids=ids, **kwargs).loss
    ref_loss = reference(input_ids=ids, **kwargs).loss
    loss.backward()
    ref_loss.backward()
    assert abs(loss.item() - ref_loss.item()) <= 1e-5
    ours = lk.model.adapter_parameters(model, "default")
    theirs = lk.model.adapter_parameters(reference, "default")
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.allclose(ours[key].grad, theirs[key].grad, atol=1e-5, rtol=1e-4), key


def test_nf4_bf16_compute_gradients_close_to_reference():
    model = _nf4_llama(compute_dtype=torch.bfloat16)
    reference = _dequantised_copy(model, lambda: tiny_llama(hidden=64))
    ids = token_batch()
    grads = []
    for m in (model, reference):
        lk.inject(m, lk.LoraConfig(r=4, alpha=8, targets=["q_proj", "down_proj"]))
        randomize_adapter(m, scale=0.05)
        m.train()
        m(input_ids=ids, labels=ids).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in lk.model.adapter_parameters(m, "default").values()]))
    assert torch.linalg.norm(grads[0] - grads[1]) <= 0.02 * torch.linalg.norm(grads[1])


def test_fresh_adapter_on_nf4_reproduces_the_nf4_base_and_only_adapters_train():
    model = _nf4_llama()
    ids = token_batch()
    base = logits(model, ids)
    lk.inject(model, lk.LoraConfig(r=4))
    assert torch.equal(logits(model, ids), base)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)


def test_nf4_adapter_saves_against_the_float_fingerprint_and_round_trips(tmp_path):
    float_model = tiny_llama(hidden=64)
    float_fp = lk.bases.fingerprint(float_model)
    model = tiny_llama(hidden=64)
    model.__dict__["lorakit_fingerprint"] = float_fp  # what bases.load records before quantising
    quant.quantize_model(model, "nf4", compute_dtype=torch.float32)
    lk.inject(model, lk.LoraConfig(r=4))
    randomize_adapter(model)
    lk.save_adapter(model, tmp_path / "a")
    assert lk.read_adapter(tmp_path / "a").base_fingerprint == float_fp
    other = _nf4_llama()
    other.__dict__["lorakit_fingerprint"] = float_fp
    lk.load_adapter(other, tmp_path / "a")
    ids = token_batch()
    assert torch.equal(logits(other, ids), logits(model, ids))
    lk.load_adapter(float_model, tmp_path / "a")  # the float base takes it as well


def test_merge_into_nf4_kept_float_equals_unmerged_and_requantised_reports_its_cost():
    ids = token_batch()
    exact = _nf4_llama()
    lk.inject(exact, lk.LoraConfig(r=4))
    randomize_adapter(exact)
    unmerged = logits(exact, ids)
    report = merge_quantized(exact, sample=ids)
    assert report.max_abs_logit_delta <= 1e-4 and report.quantized_layers == 14
    assert type(exact.model.layers[0].mlp.up_proj.base_layer) is nn.Linear
    lk.unmerge(exact)
    assert (logits(exact, ids) - unmerged).abs().max() <= 1e-4

    rounded = _nf4_llama()
    lk.inject(rounded, lk.LoraConfig(r=4))
    randomize_adapter(rounded)
    report = merge_quantized(rounded, requantize=True, sample=ids)
    assert type(rounded.model.layers[0].mlp.up_proj.base_layer).__name__ == "Linear4bit"
    assert report.max_abs_logit_delta > 1e-4 and report.mean_kl > 0
    assert "re-quantised" in str(report)


def test_merge_and_unload_of_nf4_gives_a_float_model():
    model = _nf4_llama()
    lk.inject(model, lk.LoraConfig(r=4))
    randomize_adapter(model)
    ids = token_batch()
    expected = logits(model, ids)
    plain = lk.merge_and_unload(model)
    assert type(plain.model.layers[1].self_attn.o_proj) is nn.Linear
    assert (logits(plain, ids) - expected).abs().max() <= 1e-4


def test_int8_base_trains_a_lora_adapter():
    model = quant.quantize_model(tiny_llama(hidden=64), "int8")
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == "Linear8bitLt"
    lk.inject(model, lk.LoraConfig(r=4))
    model.train()
    ids = token_batch()
    model(input_ids=ids, labels=ids).loss.backward()
    assert model.model.layers[0].self_attn.q_proj.lora_B["default"].grad.abs().sum() > 0
    weight = quant.dequantize(model.model.layers[0].self_attn.q_proj.base_layer)
    assert weight.shape == (64, 64) and weight.dtype == torch.float32


def test_bad_quantize_requests_are_config_errors():
    with pytest.raises(ConfigError, match="nf4, int8"):
        quant.quantize_model(tiny_llama(), "fp3")
    model = lk.inject(tiny_llama(hidden=64), lk.LoraConfig(r=4))
    lk.merge(model)
    with pytest.raises(ConfigError, match="merged adapters"):
        quant.quantize_model(model, "nf4")
