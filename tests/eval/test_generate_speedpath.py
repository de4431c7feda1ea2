"""Evaluation's generation at merged speed: adapters folded into a copy of the weights, rows sorted by length,
auto batch size — token-equal to the unmerged, unsorted decode it replaces, and the weights restored exactly."""

from __future__ import annotations

import pytest
import torch

import lorakit as lk
from lorakit.core.errors import MergeError
from lorakit.core.model import lora_layers
from lorakit.eval.generate import auto_batch_size, generate, left_pad, merged_copy, pad_id, prompt_ids
from tests.helpers import randomize_adapter, tiny_llama

PROMPTS = [
    "Say hello.",
    [{"role": "user", "content": "What is two plus two? Answer in one short sentence."}],
    "Name a colour",
    "x",
    "List three animals that live in the sea, then stop.",
    "Why?",
    "ok",
]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(lk.bases.resolve("smollm2-135m-instruct"))


def _previous_decode(model, tokenizer, prompts, max_new_tokens, batch_size):
    """The decode evaluation used before: prompts in their own order, adapters unmerged."""
    pad, texts = pad_id(tokenizer), []
    with torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            ids, mask = left_pad([prompt_ids(tokenizer, p) for p in prompts[start : start + batch_size]], pad, "cpu")
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
                eos_token_id=tokenizer.eos_token_id,
                num_beams=1,
            )
            texts += tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
    return texts


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_merged_sorted_decode_is_token_equal_to_the_previous_path(tokenizer, dora):
    model = tiny_llama(vocab=49152, hidden=32)
    lk.inject(model, lk.LoraConfig(r=4, alpha=8, targets="all-linear", use_dora=dora), name="a")
    randomize_adapter(model, "a", scale=0.2)
    before = _previous_decode(model, tokenizer, PROMPTS, 8, batch_size=3)
    assert generate(model, tokenizer, PROMPTS, max_new_tokens=8, batch_size=3) == before
    assert generate(model, tokenizer, PROMPTS, max_new_tokens=8) == before  # auto batch size
    with lk.disabled(model):
        assert generate(model, tokenizer, PROMPTS, max_new_tokens=8) != before  # the adapter did change the output


def test_merged_copy_restores_the_original_weights_exactly():
    model = tiny_llama()
    lk.inject(model, lk.LoraConfig(r=4, alpha=8, targets="all-linear"), name="a")
    randomize_adapter(model, "a")
    originals = {name: layer.base_layer.weight for name, layer in lora_layers(model)}
    copies = {name: w.detach().clone() for name, w in originals.items()}
    ids = torch.tensor([[1, 5, 7, 9]])
    with torch.no_grad():
        unmerged = model(input_ids=ids).logits
        with merged_copy(model):
            assert all(layer.merged == ["a"] for _, layer in lora_layers(model))
            changed = [n for n, layer in lora_layers(model) if not torch.equal(layer.base_layer.weight, copies[n])]
            assert changed, "the adapter should be folded into the weights"
            torch.testing.assert_close(model(input_ids=ids).logits, unmerged, rtol=1e-4, atol=1e-5)
    for name, layer in lora_layers(model):
        assert layer.merged == [] and layer.base_layer.weight is originals[name]
        assert torch.equal(layer.base_layer.weight, copies[name])


def test_merged_copy_refuses_a_broken_adapter_and_leaves_weights_alone():
    model = tiny_llama()
    lk.inject(model, lk.LoraConfig(r=4, alpha=8, targets=["q_proj"]), name="a")
    layers = dict(lora_layers(model))
    with torch.no_grad():
        layers["model.layers.0.self_attn.q_proj"].lora_B["a"].fill_(1.0)
        layers["model.layers.1.self_attn.q_proj"].lora_B["a"].fill_(float("nan"))
    before = {n: layer.base_layer.weight.detach().clone() for n, layer in layers.items()}
    with pytest.raises(MergeError, match=r"layer model\.layers\.1\.self_attn\.q_proj: .*NaN/inf"):
        with merged_copy(model):
            pass
    for name, layer in layers.items():
        assert layer.merged == [] and torch.equal(layer.base_layer.weight, before[name])


@pytest.mark.parametrize("threads, expected", [(1, 16), (2, 16), (4, 16), (6, 24), (16, 32)])
def test_auto_batch_size_follows_the_cpu_threads(monkeypatch, threads, expected):
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    assert auto_batch_size(torch.device("cpu")) == expected
