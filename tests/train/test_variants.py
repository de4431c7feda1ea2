"""Across variants: gradient checkpointing with a frozen base, 8-bit optimizers, rsLoRA with DoRA interop."""

from __future__ import annotations

import pytest
import torch

import lorakit as lk
from lorakit.core import quant
from lorakit.core.errors import ConfigError
from lorakit.train.bnb_optim import make_8bit_optimizer
from lorakit.train.optim import make_optimizer, param_groups
from tests.helpers import logits, randomize_adapter, tiny_llama, token_batch


def _model(variant: str):
    model = tiny_llama(hidden=64, layers=3)
    if variant == "qlora":
        quant.quantize_model(model, "nf4", compute_dtype=torch.float32)
    lk.inject(model, lk.LoraConfig(r=4, alpha=8, use_dora=variant == "dora"))
    randomize_adapter(model, scale=0.05)
    return model


def _loss_and_grads(model, ids):
    model.train()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return loss.item(), grads


@pytest.mark.parametrize(
    "variant, reentrant",
    [("lora", False), ("dora", False), ("qlora", False), ("qlora", True)],
    ids=["lora", "dora", "qlora", "qlora-reentrant"],
)
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(variant, reentrant):
    """The base is frozen, so the reentrant variant only works because inputs are made to require grad."""
    model = _model(variant)
    ids = token_batch(batch=2, length=16)
    plain_loss, plain_grads = _loss_and_grads(model, ids)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    if reentrant:
        model.enable_input_require_grads()
    ckpt_loss, ckpt_grads = _loss_and_grads(model, ids)
    assert model.model.gradient_checkpointing
    assert abs(ckpt_loss - plain_loss) <= 1e-6
    assert plain_grads.keys() == ckpt_grads.keys()
    for name, grad in plain_grads.items():
        assert torch.allclose(ckpt_grads[name], grad, atol=1e-6, rtol=1e-5), name


def test_adamw_8bit_trains_and_paged_names_what_is_available():
    model = _model("lora")
    groups = param_groups(model, "default", lr=1e-2)
    optimizer = make_optimizer(groups, "adamw_8bit")
    assert type(optimizer).__name__ == "AdamW8bit"
    ids = token_batch()
    before = logits(model, ids)
    _loss_and_grads(model, ids)
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    assert (logits(model, ids) - before).abs().max() > 0
    if not torch.cuda.is_available():
        with pytest.raises(
            ConfigError, match="paged_adamw_8bit is not available on cpu; available here: adamw, adamw_8bit"
        ):
            make_8bit_optimizer(groups, "paged_adamw_8bit")


def test_rslora_dora_adapter_round_trips_with_peft(tmp_path):
    from peft import PeftModel

    model = tiny_llama()
    lk.inject(model, lk.LoraConfig(r=8, alpha=8, use_rslora=True, use_dora=True, targets=["q_proj", "up_proj"]))
    randomize_adapter(model)
    assert model.model.layers[0].self_attn.q_proj.scaling["default"] == pytest.approx(8 / 8**0.5)
    lk.save_adapter(model, tmp_path / "a")
    ids = token_batch()
    peft_model = PeftModel.from_pretrained(tiny_llama(), str(tmp_path / "a")).eval()
    with torch.no_grad():
        assert (peft_model(input_ids=ids).logits - logits(model, ids)).abs().max() <= 1e-5
