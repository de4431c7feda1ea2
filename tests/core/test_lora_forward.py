"""The LoRA forward on one screen: its math, the in-place rule, read-only getters, layer-named errors, and
training on a base stored once in bf16 (``train/precision.py``) against the autocast path."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lorakit.core.config import LoraConfig
from lorakit.core.errors import AdapterStateError
from lorakit.core.layers.linear import can_add_in_place
from lorakit.core.model import inject, lora_layers
from lorakit.train import precision
from tests.helpers import randomize_adapter, tiny_gpt2, tiny_llama, token_batch

LAYER = "model.layers.0.self_attn.q_proj"


@pytest.fixture
def adapted():
    model = tiny_llama()
    inject(model, LoraConfig(r=4, alpha=8, targets="all-linear"))
    randomize_adapter(model)
    return model


def test_forward_is_base_plus_scaled_low_rank_path(adapted):
    layer = adapted.get_submodule(LAYER)
    x = torch.randn(2, 5, layer.in_features)
    A, B, s = layer.lora_A["default"], layer.lora_B["default"], layer.scaling["default"]
    expected = F.linear(x, layer.base_layer.weight) + s * (x @ A.T) @ B.T  # (2, 5, in) -> (2, 5, out)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "view, keeps_base, expected",
    [
        (False, False, True),  # a fresh base output: add into it
        (True, False, False),  # a view from a custom autograd Function (bitsandbytes with a bias)
        (False, True, False),  # DoRA still needs W₀x + b after another adapter's delta
    ],
)
def test_in_place_rule(view, keeps_base, expected):
    out = torch.randn(4, 6)
    assert can_add_in_place(out[:2] if view else out, keeps_base_output=keeps_base) is expected


def test_in_place_add_keeps_gradients_exact(adapted):
    """The in-place add must not disturb autograd: gradients equal those of the out-of-place sum."""
    layer = adapted.get_submodule(LAYER).train()
    x = torch.randn(3, layer.in_features, requires_grad=True)
    layer(x).square().sum().backward()
    grads = [t.grad.clone() for t in (x, layer.lora_A["default"], layer.lora_B["default"])]
    for t in (x, layer.lora_A["default"], layer.lora_B["default"]):
        t.grad = None
    A, B, s = layer.lora_A["default"], layer.lora_B["default"], layer.scaling["default"]
    (F.linear(x, layer.base_layer.weight) + s * (x @ A.T) @ B.T).square().sum().backward()
    for got, want in zip(grads, (x.grad, A.grad, B.grad)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_merged_weight_reads_without_recording_and_dora_merge_round_trips():
    model = tiny_llama()
    inject(model, LoraConfig(r=4, alpha=8, targets=["q_proj"], use_dora=True))
    randomize_adapter(model)
    layer = model.get_submodule(LAYER)
    before = layer.base_layer.weight.detach().clone()
    layer.merged_weight("default", layer.read_weight())
    assert layer.dora_factors == {} and layer.merged == []
    layer.merge("default")
    assert set(layer.dora_factors) == {"default"}
    layer.unmerge()
    assert layer.dora_factors == {}
    torch.testing.assert_close(layer.base_layer.weight, before, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "call",
    [
        lambda layer: layer.rank("missing"),
        lambda layer: layer.require_adapter("missing"),
    ],
)
def test_unknown_adapter_is_refused_naming_the_layer(adapted, call):
    with pytest.raises(AdapterStateError, match=rf"layer {LAYER}: no adapter named 'missing'; it has \['default'\]"):
        call(adapted.get_submodule(LAYER))


@pytest.mark.parametrize(
    "act, message",
    [
        (lambda layer: (layer.merge("default"), layer.merge("default")), "is already merged"),
        (lambda layer: layer.add_adapter("default", 2, 1.0, 0.0), "already exists"),
        (lambda layer: (layer.merge("default"), layer.delete_adapter("default")), "is merged into the base weight"),
    ],
)
def test_errors_raised_inside_a_layer_name_it(adapted, act, message):
    with pytest.raises(AdapterStateError, match=rf"^layer {LAYER}: .*{message}"):
        act(adapted.get_submodule(LAYER))


# -- frozen base stored once in bf16 ------------------------------------------------------------------------
def _loss_and_grads(model, ids):
    model.zero_grad(set_to_none=True)
    with precision.autocast("bf16", "cpu"):
        logits = model(input_ids=ids).logits
    loss = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2], ids=["llama-linear", "gpt2-conv1d"])
def test_bf16_stored_base_trains_like_autocast(build):
    """Loss and every adapter gradient within bf16 tolerance of the fp32-stored base under autocast; adapters fp32."""
    model = build()
    inject(model, LoraConfig(r=4, alpha=8, targets="all-linear"))
    randomize_adapter(model)
    model.eval()  # the models' own dropout off, so both passes see the same function (gradients still flow)
    ids = token_batch(batch=2, length=12)
    loss, grads = _loss_and_grads(model, ids)
    cast = precision.store_frozen(model, torch.bfloat16)
    assert cast > 0
    for _, layer in lora_layers(model):
        assert layer.base_layer.weight.dtype == torch.bfloat16 and not layer.base_layer.weight.requires_grad
        assert all(p.dtype == torch.float32 for p in (*layer.lora_A.values(), *layer.lora_B.values()))
    loss_bf16, grads_bf16 = _loss_and_grads(model, ids)
    torch.testing.assert_close(loss_bf16, loss, rtol=2e-2, atol=2e-2)
    assert grads_bf16.keys() == grads.keys()
    for name, grad in grads.items():
        assert grads_bf16[name].dtype == torch.float32, name
        rel = (grads_bf16[name] - grad).norm() / grad.norm().clamp_min(1e-12)
        assert rel < 0.05, f"{name}: relative gradient error {rel:.3g}"


def test_store_frozen_leaves_trainable_tied_and_norm_weights_alone():
    model = tiny_llama()
    model.lm_head.weight = model.model.embed_tokens.weight  # tie the head to the embedding
    inject(model, LoraConfig(r=4, alpha=8, targets=["q_proj", "v_proj"]))
    trained = model.get_submodule("model.layers.0.mlp.up_proj")
    trained.weight.requires_grad_(True)
    precision.store_frozen(model, torch.bfloat16)
    assert model.get_submodule("model.layers.0.mlp.down_proj").weight.dtype == torch.bfloat16
    assert model.get_submodule(LAYER).base_layer.weight.dtype == torch.bfloat16
    for kept in (
        trained.weight,
        model.lm_head.weight,
        model.model.norm.weight,
        model.get_submodule(LAYER).lora_A["default"],
    ):
        assert kept.dtype == torch.float32
    assert precision.store_frozen(model, torch.bfloat16) == 0  # idempotent


def test_fp32_training_stores_nothing_differently():
    assert precision.compute_dtype("fp32") is None and precision.compute_dtype("bf16") is torch.bfloat16
