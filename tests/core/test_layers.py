"""The LoRA core: injection, activation, disabling, merging, unloading."""

from __future__ import annotations

import pytest
import torch

import lorakit as lk
from lorakit.core.errors import AdapterStateError, ConfigError, MergeError, TargetNotFoundError
from lorakit.core.layers import LoraEmbedding, LoraLinear
from tests.helpers import logits, randomize_adapter, tiny_gpt2, tiny_llama, token_batch

ATOL = 1e-5


def test_fresh_adapter_reproduces_base_exactly(llama):
    ids = token_batch()
    base = logits(llama, ids)
    lk.inject(llama, lk.LoraConfig(r=4, targets="all-linear"))
    assert torch.equal(logits(llama, ids), base)


def test_all_linear_skips_output_head_and_wraps_every_projection(llama):
    lk.inject(llama, lk.LoraConfig(r=4))
    wrapped = {n for n, m in llama.named_modules() if isinstance(m, LoraLinear)}
    assert len(wrapped) == 2 * 7
    assert not isinstance(llama.lm_head, LoraLinear)


def test_training_steps_change_only_adapter_parameters(llama):
    before = {n: p.detach().clone() for n, p in llama.named_parameters()}
    lk.inject(llama, lk.LoraConfig(r=4, targets=["q_proj", "v_proj"]))
    trainable = {n for n, p in llama.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    optimizer = torch.optim.AdamW([p for p in llama.parameters() if p.requires_grad], lr=1e-2)
    ids = token_batch()
    llama.train()
    for _ in range(3):
        loss = llama(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    for name, p in llama.named_parameters():
        original = name.replace(".base_layer", "")
        if original in before:
            assert torch.equal(p, before[original]), name
    b = llama.model.layers[0].self_attn.q_proj.lora_B["default"]
    assert b.abs().sum() > 0


def test_disabled_gives_base_and_afterwards_the_adapted_output(llama):
    ids = token_batch()
    base = logits(llama, ids)
    lk.inject(llama, lk.LoraConfig(r=4))
    randomize_adapter(llama)
    adapted = logits(llama, ids)
    assert (adapted - base).abs().max() > 1e-3
    with lk.disabled(llama):
        assert torch.equal(logits(llama, ids), base)
    assert torch.equal(logits(llama, ids), adapted)


@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2-conv1d"])
def test_merge_equals_unmerged_and_unmerge_restores_weights(make):
    model = make()
    ids = token_batch()
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    lk.inject(model, lk.LoraConfig(r=4, alpha=8))
    randomize_adapter(model)
    unmerged = logits(model, ids)
    lk.merge(model)
    assert (logits(model, ids) - unmerged).abs().max() <= ATOL
    lk.unmerge(model)
    for name, p in model.named_parameters():
        original = name.replace(".base_layer", "")
        if original in weights:
            assert torch.allclose(p, weights[original], atol=1e-6), name
    assert (logits(model, ids) - unmerged).abs().max() <= ATOL


def test_merging_twice_or_unmerging_nothing_is_an_error(llama):
    lk.inject(llama, lk.LoraConfig(r=4))
    with pytest.raises(AdapterStateError, match="nothing is merged"):
        lk.unmerge(llama)
    lk.merge(llama)
    with pytest.raises(AdapterStateError, match="already merged"):
        lk.merge(llama)


def test_safe_merge_refuses_nan_and_leaves_weights_untouched(llama):
    lk.inject(llama, lk.LoraConfig(r=4, targets=["q_proj"]))
    layer = llama.model.layers[0].self_attn.q_proj
    weight = layer.base_layer.weight.detach().clone()
    with torch.no_grad():
        layer.lora_B["default"].fill_(float("nan"))
    with pytest.raises(MergeError, match="NaN"):
        lk.merge(llama)
    assert torch.equal(layer.base_layer.weight, weight)


def test_two_active_adapters_add_their_deltas(llama):
    ids = token_batch()
    base = logits(llama, ids)
    lk.inject(llama, lk.LoraConfig(r=4, targets=["q_proj", "down_proj"]), name="a")
    lk.inject(llama, lk.LoraConfig(r=2, targets=["v_proj", "down_proj"]), name="b")
    randomize_adapter(llama, "a", seed=1)
    randomize_adapter(llama, "b", seed=2)
    both = []
    for names in (["a"], ["b"], ["a", "b"]):
        lk.set_active(llama, names)
        both.append(logits(llama, ids))
    # the combined model is nonlinear in the deltas; compare against merging both
    lk.merge(llama, ["a", "b"])
    assert (logits(llama, ids) - both[2]).abs().max() <= ATOL
    assert (both[2] - both[0]).abs().max() > 1e-3 and (both[2] - both[1]).abs().max() > 1e-3
    assert (both[0] - base).abs().max() > 1e-3


def test_two_active_adapters_sum_at_the_layer(llama):
    lk.inject(llama, lk.LoraConfig(r=4, targets=["q_proj"]), name="a")
    lk.inject(llama, lk.LoraConfig(r=2, targets=["q_proj"]), name="b")
    randomize_adapter(llama, "a", seed=1)
    randomize_adapter(llama, "b", seed=2)
    layer = llama.model.layers[0].self_attn.q_proj
    x = torch.randn(3, 32)
    base = layer.base_layer(x)
    outs = {}
    for names in (("a",), ("b",), ("a", "b")):
        lk.set_active(llama, list(names))
        with torch.no_grad():
            outs[names] = layer(x)
    assert torch.allclose(outs[("a", "b")] - base, (outs[("a",)] - base) + (outs[("b",)] - base), atol=ATOL)


def test_unload_restores_original_state_dict_and_modules(llama):
    keys = {k: v.clone() for k, v in llama.state_dict().items()}
    flags = {n: p.requires_grad for n, p in llama.named_parameters()}
    q_proj = llama.model.layers[0].self_attn.q_proj
    lk.inject(llama, lk.LoraConfig(r=4, modules_to_save=["lm_head"]))
    randomize_adapter(llama)
    plain = lk.unload(llama)
    assert plain.model.layers[0].self_attn.q_proj is q_proj
    state = plain.state_dict()
    assert list(state) == list(keys)
    assert all(torch.equal(state[k], keys[k]) for k in keys)
    assert {n: p.requires_grad for n, p in plain.named_parameters()} == flags


def test_merge_and_unload_gives_plain_model_with_adapted_outputs(llama):
    ids = token_batch()
    lk.inject(llama, lk.LoraConfig(r=4, modules_to_save=["lm_head"]))
    randomize_adapter(llama)
    adapted = logits(llama, ids)
    plain = lk.merge_and_unload(llama)
    assert not any(isinstance(m, (LoraLinear, LoraEmbedding)) for m in plain.modules())
    assert type(plain.lm_head).__name__ == "Linear"
    assert (logits(plain, ids) - adapted).abs().max() <= ATOL


def test_embedding_adapter_merges_exactly(llama):
    ids = token_batch()
    lk.inject(llama, lk.LoraConfig(r=4, targets=["embed_tokens", "q_proj"]))
    assert isinstance(llama.model.embed_tokens, LoraEmbedding)
    randomize_adapter(llama)
    unmerged = logits(llama, ids)
    lk.merge(llama)
    assert (logits(llama, ids) - unmerged).abs().max() <= ATOL


def test_targets_matching_nothing_name_the_closest_modules(llama):
    with pytest.raises(TargetNotFoundError, match="q_proj"):
        lk.inject(llama, lk.LoraConfig(targets=["q_prj"]))
    assert not any(isinstance(m, LoraLinear) for m in llama.modules())


def test_layers_and_exclude_and_rank_pattern(llama):
    cfg = lk.LoraConfig(
        r=4, layers=[1], exclude=["down_proj"], rank_pattern={"q_proj": 2}, alpha_pattern={"q_proj": 1.0}
    )
    lk.inject(llama, cfg)
    wrapped = {n for n, m in llama.named_modules() if isinstance(m, LoraLinear)}
    assert all(".layers.1." in n for n in wrapped) and not any("down_proj" in n for n in wrapped)
    q = llama.model.layers[1].self_attn.q_proj
    assert q.rank("default") == 2 and q.scaling["default"] == 0.5
    assert llama.model.layers[1].self_attn.k_proj.scaling["default"] == 16 / 4


def test_rslora_scale_is_alpha_over_sqrt_r(llama):
    lk.inject(llama, lk.LoraConfig(r=16, alpha=8, use_rslora=True, targets=["q_proj"]))
    assert llama.model.layers[0].self_attn.q_proj.scaling["default"] == pytest.approx(2.0)


def test_delete_adapter_and_unknown_names(llama):
    lk.inject(llama, lk.LoraConfig(r=4), name="a")
    lk.inject(llama, lk.LoraConfig(r=4), name="b")
    with pytest.raises(AdapterStateError, match="no adapter named 'c'"):
        lk.set_active(llama, "c")
    lk.delete_adapter(llama, "a")
    assert lk.adapter_names(llama) == ["b"]
    assert "a" not in llama.model.layers[0].self_attn.q_proj.lora_A
    with pytest.raises(AdapterStateError, match="already exists"):
        lk.inject(llama, lk.LoraConfig(r=4), name="b")


def test_trainable_summary_counts_adapter_parameters(llama):
    total = sum(p.numel() for p in llama.parameters())
    lk.inject(llama, lk.LoraConfig(r=4, targets=["q_proj"]))
    summary = lk.trainable_summary(llama)
    assert summary.trainable == 2 * 4 * (32 + 32)
    assert summary.total == total + summary.trainable
    assert summary.ratio == pytest.approx(summary.trainable / summary.total)
    assert "q_proj.lora_A.default" in summary.table()


@pytest.mark.parametrize(
    "bad",
    [
        dict(r=0),
        dict(alpha=-1),
        dict(dropout=1.5),
        dict(bias="some"),
        dict(targets="("),
        dict(init="xavier"),
        dict(targets=[]),
    ],
)
def test_bad_config_values_are_config_errors(bad):
    with pytest.raises(ConfigError):
        lk.LoraConfig(**bad)


def test_bias_lora_only_trains_wrapped_biases(gpt2):
    lk.inject(gpt2, lk.LoraConfig(r=4, targets=["c_attn"], bias="lora_only"))
    trainable = {n for n, p in gpt2.named_parameters() if p.requires_grad}
    assert "transformer.h.0.attn.c_attn.base_layer.bias" in trainable
    assert "transformer.h.0.mlp.c_fc.bias" not in trainable


def test_row_adapters_match_each_adapter_alone(llama):
    lk.inject(llama, lk.LoraConfig(r=4), name="a")
    lk.inject(llama, lk.LoraConfig(r=2, targets=["q_proj", "v_proj"]), name="b")
    randomize_adapter(llama, "a", seed=1)
    randomize_adapter(llama, "b", seed=2)
    ids = token_batch(batch=3)
    expected = []
    for row, name in enumerate(["a", None, "b"]):
        if name is None:
            with lk.disabled(llama):
                expected.append(logits(llama, ids[row : row + 1]))
        else:
            lk.set_active(llama, name)
            expected.append(logits(llama, ids[row : row + 1]))
    with lk.row_adapters(llama, ["a", None, "b"]):
        mixed = logits(llama, ids)
    assert (mixed - torch.cat(expected)).abs().max() <= ATOL
