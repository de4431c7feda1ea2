"""Kind 1 of issue 11: a new wrapper takes the state of the module it wraps — train/eval mode (dropout never
runs in eval), device, dtype — and the base stays frozen while the adapter trains; outputs equal PEFT's."""

from __future__ import annotations

import peft
import pytest
import torch

import lorakit as lk
from lorakit.core.files import load_adapter
from lorakit.core.layers import LoraLayer
from lorakit.core.modules import Wrapper
from tests.helpers import logits, randomize_adapter, tiny_llama, token_batch

CONFIG = lk.LoraConfig(
    r=4, alpha=8, targets=["q_proj", "v_proj", "embed_tokens"], dropout=0.3, modules_to_save=["lm_head"]
)


def _wrappers(model):
    return [(name, m) for name, m in model.named_modules() if isinstance(m, Wrapper)]


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_inject_wrappers_take_the_mode_of_the_wrapped_module(training):
    model = tiny_llama().train(training)
    lk.inject(model, CONFIG)
    for name, wrapper in _wrappers(model):
        assert all(part.training is training for part in wrapper.modules()), name


def test_eval_model_gives_identical_outputs_after_inject_with_dropout():
    model = tiny_llama()
    lk.inject(model, CONFIG)
    randomize_adapter(model)
    ids = token_batch()
    torch.testing.assert_close(logits(model, ids), logits(model, ids), rtol=0, atol=0)


def test_peft_adapter_with_dropout_loads_ready_for_inference(tmp_path):
    """An adapter PEFT saved with dropout 0.1, loaded into an eval-mode model: deterministic and equal to PEFT."""
    ids = token_batch()
    reference = peft.get_peft_model(
        tiny_llama(),
        peft.LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.1, init_lora_weights=False
        ),
    ).eval()
    expected = logits(reference, ids)
    reference.save_pretrained(tmp_path)
    model = load_adapter(tiny_llama(), tmp_path)
    first, second = logits(model, ids), logits(model, ids)
    assert torch.equal(first, second)
    torch.testing.assert_close(first, expected, rtol=0, atol=1e-5)


def test_training_mode_still_drops_out():
    model = tiny_llama().train()
    lk.inject(model, CONFIG)
    randomize_adapter(model)  # B ≠ 0, so dropout on the adapter's input shows in the output
    ids = token_batch()
    assert not torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_new_adapter_params_follow_base_device_and_dtype_and_only_they_train(dtype):
    model = tiny_llama().to(dtype)
    lk.inject(model, CONFIG)
    for name, layer in model.named_modules():
        if isinstance(layer, LoraLayer):
            weight = layer.base_layer.weight
            for attr in layer.adapter_param_names:
                for p in getattr(layer, attr).values():
                    assert (p.device, p.dtype, p.requires_grad) == (weight.device, dtype, True), f"{name}.{attr}"
            assert not weight.requires_grad, name
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n or ".modules_to_save." in n for n in trainable)


def test_merge_of_a_quantized_base_keeps_the_float_layer_in_the_wrappers_mode():
    pytest.importorskip("bitsandbytes")
    from lorakit.core import quant

    model = quant.quantize_model(tiny_llama(), "nf4", compute_dtype=torch.float32)
    lk.inject(model, lk.LoraConfig(r=2, alpha=4, targets=["q_proj"], dropout=0.1))
    lk.merge(model)  # the quantised layer becomes a float nn.Linear while merged
    layer = model.get_submodule("model.layers.0.self_attn.q_proj")
    assert not layer.base_layer.training and not quant.is_quantized(layer.base_layer)
