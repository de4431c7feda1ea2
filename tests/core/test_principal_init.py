"""PiSSA / OLoRA: principal-direction adapters over a residual W₀, saved as plain LoRA against the original base."""

from __future__ import annotations

import pytest
import torch

import lorakit as lk
from lorakit.core import quant
from lorakit.core.errors import ConfigError
from tests.helpers import logits, tiny_gpt2, tiny_llama, token_batch

INITS = ["pissa", "pissa_niter_4", "olora"]


def _train_a_little(model, steps: int = 3) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    ids = token_batch()
    model.train()
    for _ in range(steps):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


@pytest.mark.parametrize("init", INITS)
def test_residual_plus_adapter_reproduces_w0(init):
    model = tiny_llama()
    originals = {n: m.weight.detach().clone() for n, m in model.named_modules() if n.endswith("_proj")}
    ids = token_batch()
    base = logits(model, ids)
    lk.inject(model, lk.LoraConfig(r=4, alpha=8, init=init))
    layer = model.model.layers[0].mlp.down_proj
    assert not torch.allclose(layer.base_layer.weight, originals["model.layers.0.mlp.down_proj"], atol=1e-3)
    for name, weight in originals.items():
        layer = model.get_submodule(name)
        rebuilt = layer.base_layer.weight + layer.delta_weight("default")
        assert torch.allclose(rebuilt, weight, atol=1e-5), name
    assert (logits(model, ids) - base).abs().max() <= 1e-4


def test_pissa_adapter_holds_the_top_singular_directions():
    model = tiny_llama()
    weight = model.model.layers[1].self_attn.o_proj.weight.detach().clone()
    lk.inject(model, lk.LoraConfig(r=4, alpha=8, targets=["o_proj"], init="pissa"))
    layer = model.model.layers[1].self_attn.o_proj
    singular = torch.linalg.svdvals(weight)
    assert torch.allclose(torch.linalg.svdvals(layer.delta_weight("default"))[:4], singular[:4], atol=1e-4)
    assert torch.allclose(torch.linalg.svdvals(layer.base_layer.weight)[0], singular[4], atol=1e-4)


@pytest.mark.parametrize(
    "make, init",
    [(tiny_llama, "pissa"), (tiny_llama, "olora"), (tiny_gpt2, "pissa_niter_4")],
    ids=["llama-pissa", "llama-olora", "gpt2-conv1d-pissa_niter_4"],
)
def test_saved_adapter_is_plain_lora_that_gives_the_trained_outputs_on_the_untouched_base(tmp_path, init, make):
    from peft import PeftModel

    model = make()
    lk.inject(model, lk.LoraConfig(r=4, alpha=8, init=init))
    _train_a_little(model)
    ids = token_batch()
    trained = logits(model, ids)
    lk.save_adapter(model, tmp_path / "a")
    files = lk.read_adapter(tmp_path / "a")
    assert files.config.r == 8 and files.config.alpha == 16 and files.config.init == "default"
    assert files.raw_config["init_lora_weights"] is True
    fresh = lk.load_adapter(make(), tmp_path / "a")
    assert (logits(fresh, ids) - trained).abs().max() <= 1e-4
    peft_model = PeftModel.from_pretrained(make(), str(tmp_path / "a")).eval()
    with torch.no_grad():
        assert (peft_model(input_ids=ids).logits - trained).abs().max() <= 1e-4


def test_merge_into_the_residual_equals_unmerged():
    model = tiny_llama()
    lk.inject(model, lk.LoraConfig(r=4, alpha=8, init="olora"))
    _train_a_little(model)
    ids = token_batch()
    unmerged = logits(model, ids)
    lk.merge(model)
    assert (logits(model, ids) - unmerged).abs().max() <= 1e-5


def test_pissa_with_dora_saves_and_reloads(tmp_path):
    model = tiny_llama()
    lk.inject(model, lk.LoraConfig(r=4, alpha=8, init="pissa", use_dora=True))
    _train_a_little(model)
    ids = token_batch()
    lk.save_adapter(model, tmp_path / "a")
    assert (logits(lk.load_adapter(tiny_llama(), tmp_path / "a"), ids) - logits(model, ids)).abs().max() <= 1e-4


def test_pissa_then_nf4_rounds_the_residual_with_less_error_than_plain_nf4():
    """PiSSA on the float base, then NF4: the residual, without the largest directions, rounds with less error."""
    generator = torch.Generator().manual_seed(0)
    low_rank = torch.randn(128, 8, generator=generator) @ torch.randn(
        8, 64, generator=generator
    )  # as trained weights have
    weight = 0.02 * low_rank + 0.01 * torch.randn(128, 64, generator=generator)
    plain, model = tiny_llama(hidden=64), tiny_llama(hidden=64)
    for m in (plain, model):
        m.model.layers[0].mlp.up_proj.weight.data.copy_(weight)
    quant.quantize_model(plain, "nf4", compute_dtype=torch.float32)
    plain_error = (quant.dequantize(plain.model.layers[0].mlp.up_proj) - weight).norm()
    lk.inject(model, lk.LoraConfig(r=16, alpha=16, targets=["up_proj"], init="pissa"))
    quant.quantize_model(model, "nf4", compute_dtype=torch.float32)
    layer = model.model.layers[0].mlp.up_proj
    assert quant.is_quantized(layer.base_layer)
    pissa_error = (layer.read_weight() + layer.delta_weight("default") - weight).norm()
    assert pissa_error < 0.5 * plain_error


def test_rank_above_the_layer_size_or_a_quantised_start_is_a_config_error():
    with pytest.raises(ConfigError, match="r ≤ min"):
        lk.inject(tiny_llama(), lk.LoraConfig(r=40, init="olora"))
    with pytest.raises(ConfigError, match="float base, then quantise"):
        lk.inject(quant.quantize_model(tiny_llama(hidden=64), "nf4"), lk.LoraConfig(r=4, init="pissa"))
