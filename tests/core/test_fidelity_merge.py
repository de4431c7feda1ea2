"""Kind 5 of issue 11: merging every variant exactly — any number of adapters, DoRA among them, in one call or
one after another: merged == unmerged (≤ 1e-5 fp32), unmerge restores W₀ (≤ 1e-6); quantised bases get their
quantised layer back on unmerge; PEFT's order of several active DoRA adapters."""

from __future__ import annotations

import peft
import pytest
import torch

import lorakit as lk
from lorakit.core.files import load_adapter
from lorakit.core.layers import LoraLayer
from lorakit.core.layers.variants.adalora import inject_adalora
from tests.helpers import logits, randomize_adapter, tiny_gpt2, tiny_llama, token_batch

LLAMA_TARGETS = ["q_proj", "v_proj", "down_proj"]
GPT2_TARGETS = ["c_attn", "c_proj"]  # Conv1D: weights stored (in, out)


def _config(targets, **options):
    return lk.LoraConfig(r=4, alpha=8, targets=targets, **options)


ADAPTERS = {  # name -> options of each adapter injected, in order
    "lora": [{}],
    "lora x3": [{}, {}, {}],
    "dora x2": [{"use_dora": True}, {"use_dora": True}],
    "dora + lora": [{"use_dora": True}, {}],
    "lora + dora": [{}, {"use_dora": True}],
    "rslora + dora": [{"use_rslora": True}, {"use_dora": True, "use_rslora": True}],
    "pissa + olora": [{"init": "pissa"}, {"init": "olora"}],
    "gaussian + dora": [{"init": "gaussian"}, {"use_dora": True}],
}
BASES = {"llama": (tiny_llama, LLAMA_TARGETS), "gpt2": (tiny_gpt2, GPT2_TARGETS)}


def randomize(model, name: str, seed: int, scale: float = 0.1) -> None:
    """Random A and B (as training leaves them); DoRA's magnitude stays near ‖W₀‖ per row (as training keeps
    it, f ≈ 1), moved by ±10%."""
    layers = [
        layer
        for layer in model.modules()
        if isinstance(layer, LoraLayer) and name in getattr(layer, "lora_magnitude", {})
    ]
    magnitudes = [layer.lora_magnitude[name].detach().clone() for layer in layers]
    randomize_adapter(model, name, scale=scale, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer, m in zip(layers, magnitudes):
            layer.lora_magnitude[name].copy_(m * (1 + 0.1 * torch.randn(m.shape, generator=generator)))


def _adapted(base: str, adapters: str):
    build, targets = BASES[base]
    model = build()
    names = [f"a{i}" for i in range(len(ADAPTERS[adapters]))]
    for i, (name, options) in enumerate(zip(names, ADAPTERS[adapters])):
        lk.inject(model, _config(targets, **options), name=name)
        randomize(model, name, seed=10 + i)
    lk.set_active(model, names)
    return model, names


def _base_weights(model):
    return {name: layer.read_weight().clone() for name, layer in model.named_modules() if isinstance(layer, LoraLayer)}


@pytest.mark.parametrize("base", list(BASES))
@pytest.mark.parametrize("adapters", list(ADAPTERS))
@pytest.mark.parametrize("one_call", [True, False], ids=["one-call", "one-by-one"])
def test_merged_equals_unmerged_and_unmerge_restores_w0(base, adapters, one_call):
    model, names = _adapted(base, adapters)
    ids = token_batch()
    unmerged, w0 = logits(model, ids), _base_weights(model)
    if one_call:
        lk.merge(model, names)
    else:
        for name in names:
            lk.merge(model, name)
    torch.testing.assert_close(logits(model, ids), unmerged, rtol=0, atol=1e-5)
    lk.unmerge(model)
    for name, weight in _base_weights(model).items():
        torch.testing.assert_close(weight, w0[name], rtol=0, atol=1e-6)
    torch.testing.assert_close(logits(model, ids), unmerged, rtol=0, atol=1e-5)


def test_merge_follows_forward_order_whatever_order_names_are_given():
    model, names = _adapted("llama", "dora + lora")
    ids = token_batch()
    unmerged = logits(model, ids)
    lk.merge(model, list(reversed(names)))
    torch.testing.assert_close(logits(model, ids), unmerged, rtol=0, atol=1e-5)


def test_adalora_merges_exactly():
    model = tiny_llama()
    inject_adalora(model, _config(LLAMA_TARGETS), init_r=6)
    randomize_adapter(model)
    ids = token_batch()
    unmerged, w0 = logits(model, ids), _base_weights(model)
    lk.merge(model)
    torch.testing.assert_close(logits(model, ids), unmerged, rtol=0, atol=1e-5)
    lk.unmerge(model)
    for name, weight in _base_weights(model).items():
        torch.testing.assert_close(weight, w0[name], rtol=0, atol=1e-6)


def test_merged_after_partial_merge_keeps_dora_norms_on_w0():
    """One DoRA adapter merged, the other still computed in forward: its weight norm is of W₀, not of the
    merged weight, so the outputs stay those of both unmerged."""
    model, names = _adapted("llama", "dora x2")
    ids = token_batch()
    unmerged = logits(model, ids)
    lk.merge(model, names[0])
    torch.testing.assert_close(logits(model, ids), unmerged, rtol=0, atol=1e-5)


def test_several_active_dora_adapters_match_peft(tmp_path):
    """PEFT runs active adapters in order and each DoRA adapter rescales the output before it."""
    reference = tiny_llama()
    for i, name in enumerate(["a", "b"]):
        config = peft.LoraConfig(
            r=4, lora_alpha=8, target_modules=LLAMA_TARGETS, use_dora=True, init_lora_weights=False
        )
        if i == 0:
            reference = peft.get_peft_model(reference, config, adapter_name=name)
        else:
            reference.add_adapter(name, config)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for pname, p in reference.named_parameters():
            if "lora_magnitude" in pname:
                p.mul_(1 + 0.1 * torch.randn(p.shape, generator=generator))
    reference.base_model.set_adapter(["a", "b"])
    reference.eval()
    ids = token_batch()
    expected = logits(reference, ids)
    reference.save_pretrained(tmp_path)
    model = tiny_llama()
    load_adapter(model, tmp_path / "a" if (tmp_path / "a").is_dir() else tmp_path, name="a")
    load_adapter(model, tmp_path / "b", name="b")
    lk.set_active(model, ["a", "b"])
    torch.testing.assert_close(logits(model, ids), expected, rtol=0, atol=1e-5)
    lk.merge(model)
    torch.testing.assert_close(logits(model, ids), expected, rtol=0, atol=1e-5)


# -- quantised bases --------------------------------------------------------------------------------------------
def _quantized_adapted(dora: bool):
    pytest.importorskip("bitsandbytes")
    from lorakit.core import quant

    model = quant.quantize_model(tiny_llama(), "nf4", compute_dtype=torch.float32)
    lk.inject(model, _config(LLAMA_TARGETS, use_dora=dora))
    randomize(model, "default", seed=3, scale=0.2)
    return model, quant


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
@pytest.mark.parametrize("requantize", [False, True], ids=["float", "requantize"])
def test_quantized_merge_then_unmerge_gives_back_the_quantized_layer_bit_for_bit(requantize, dora):
    model, quant = _quantized_adapted(dora)
    ids = token_batch()
    layers = {name: layer for name, layer in model.named_modules() if isinstance(layer, LoraLayer)}
    before = {name: layer.base_layer.weight.data.clone() for name, layer in layers.items()}
    unmerged = logits(model, ids)
    lk.merge(model, requantize=requantize)
    merged = logits(model, ids)
    assert all(quant.is_quantized(layer.base_layer) is requantize for layer in layers.values())
    if not requantize:  # float merge: exact up to fp32 rounding
        torch.testing.assert_close(merged, unmerged, rtol=0, atol=1e-5)
    else:  # W₀ + ΔW rounded to the NF4 grid again: outputs move by that rounding, and not more
        assert 0 < (merged - unmerged).abs().max() < 0.5
    lk.unmerge(model)
    for name, layer in layers.items():
        assert quant.is_quantized(layer.base_layer), name
        assert torch.equal(layer.base_layer.weight.data, before[name]), name
    torch.testing.assert_close(logits(model, ids), unmerged, rtol=0, atol=0)
    assert not any("quantized_base" in key for key in model.state_dict())


@pytest.mark.parametrize("adapters", ["dora x2", "dora + lora", "lora + dora"])
def test_generation_merged_copy_with_several_dora_active_equals_unmerged(adapters):
    from lorakit.eval.generate import merged_copy

    model, names = _adapted("llama", adapters)
    ids = token_batch()
    unmerged = logits(model, ids)
    unmerged_tokens = model.generate(input_ids=ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    with merged_copy(model):
        assert (logits(model, ids) - unmerged).abs().max() <= 1e-5
        assert torch.equal(
            model.generate(input_ids=ids, max_new_tokens=6, do_sample=False, pad_token_id=0), unmerged_tokens
        )
    assert torch.equal(logits(model, ids), unmerged)
