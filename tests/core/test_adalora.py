"""AdaLoRA: SVD-form adapters, the orthogonality regulariser, budgeted rank allocation, plain-LoRA export."""

from __future__ import annotations

import pytest
import torch

import lorakit as lk
from lorakit.core.errors import ConfigError
from lorakit.core.layers.variants.adalora import inject_adalora, kept_ranks, orthogonality_penalty
from lorakit.train.adalora_budget import AdaLoraConfig, RankAllocator, budget_at
from tests.helpers import logits, tiny_llama, token_batch

MODULES = 14  # 7 projections × 2 blocks of the tiny Llama


def _trained(steps: int = 12, init_r: int = 6, target_r: int = 2):
    """A tiny Llama whose AdaLoRA adapter went through the whole schedule; returns (model, config)."""
    model = tiny_llama()
    config = AdaLoraConfig(init_r=init_r, target_r=target_r, tinit=2, tfinal=2, delta_t=1, total_step=steps)
    inject_adalora(model, lk.LoraConfig(alpha=8), init_r)
    allocator = RankAllocator(model, config)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2e-2)
    ids = token_batch(batch=4, length=12)
    model.train()
    for step in range(steps):
        loss = model(input_ids=ids, labels=ids).loss + config.orth_reg_weight * orthogonality_penalty(model)
        loss.backward()
        allocator.update_importance()
        optimizer.step()
        allocator.step(step)
        optimizer.zero_grad()
    allocator.finish()
    return model.eval(), config


def test_fresh_svd_adapter_reproduces_base(llama):
    ids = token_batch()
    base = logits(llama, ids)
    inject_adalora(llama, lk.LoraConfig(alpha=8), init_r=6)
    assert llama.model.layers[0].self_attn.q_proj.lora_E["default"].shape == (6,)
    assert torch.equal(logits(llama, ids), base)


def test_orthogonality_penalty_is_zero_for_orthonormal_factors(llama):
    inject_adalora(llama, lk.LoraConfig(alpha=8, targets=["q_proj"]), init_r=4)
    assert orthogonality_penalty(llama) > 0.5
    with torch.no_grad():
        for layer in (llama.model.layers[i].self_attn.q_proj for i in range(2)):
            q, _ = torch.linalg.qr(torch.randn(32, 4))  # (in, r) with orthonormal columns
            layer.lora_A["default"].copy_(q.T)
            layer.lora_B["default"].copy_(q)
    assert orthogonality_penalty(llama) <= 1e-5


def test_budget_schedule_falls_cubically_from_init_to_target():
    config = AdaLoraConfig(init_r=12, target_r=4, tinit=10, tfinal=10, delta_t=5, total_step=100)
    budgets = [budget_at(config, step, modules=10)[0] for step in range(100)]
    assert budgets[0] == budgets[10] == 120 and budgets[95] == 40
    assert all(a >= b for a, b in zip(budgets, budgets[1:]))
    assert budgets[55] == int(40 + 80 * (1 - 45 / 80) ** 3)
    assert budget_at(config, 55, 10)[1] and not budget_at(config, 56, 10)[1]


def test_final_ranks_respect_the_budget_and_differ_between_modules():
    model, config = _trained()
    ranks = kept_ranks(model)
    assert len(ranks) == MODULES
    assert sum(ranks.values()) <= config.target_r * MODULES
    assert len(set(ranks.values())) > 1


def test_saved_as_plain_lora_with_rank_pattern_that_loads_in_lorakit_and_peft(tmp_path):
    from peft import PeftModel

    model, _ = _trained()
    ids = token_batch()
    trained = logits(model, ids)
    lk.save_adapter(model, tmp_path / "a")
    files = lk.read_adapter(tmp_path / "a")
    assert files.raw_config["peft_type"] == "LORA"
    ranks = {m: max(k, 1) for m, k in kept_ranks(model).items()}
    assert {m: files.config.rank_for(m) for m in ranks} == ranks
    assert not any(".lora_E" in key for key in files.tensors)
    assert (logits(lk.load_adapter(tiny_llama(), tmp_path / "a"), ids) - trained).abs().max() <= 1e-5
    peft_model = PeftModel.from_pretrained(tiny_llama(), str(tmp_path / "a")).eval()
    with torch.no_grad():
        assert (peft_model(input_ids=ids).logits - trained).abs().max() <= 1e-5


def test_merge_of_svd_form_equals_unmerged():
    model, _ = _trained(steps=6)
    ids = token_batch()
    unmerged = logits(model, ids)
    lk.merge(model)
    assert (logits(model, ids) - unmerged).abs().max() <= 1e-5


@pytest.mark.parametrize("kwargs", [dict(init_r=4, target_r=8), dict(tinit=50, tfinal=50, total_step=100)])
def test_bad_schedules_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        AdaLoraConfig(**kwargs)
