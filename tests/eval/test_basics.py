"""Generation, drift and the shipped general sets on a tiny random Llama with the default model's real tokenizer."""

from __future__ import annotations

import pytest
import torch

import lorakit as lk
from lorakit.eval.drift import drift_kl
from lorakit.eval.generate import generate, prompt_ids, render
from lorakit.eval.regression import general_choices, general_prompts, general_texts
from tests.helpers import randomize_adapter, tiny_llama

PROMPTS = ["Say hello.", [{"role": "user", "content": "What is two plus two?"}], "Name a colour", "x"]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(lk.bases.resolve("smollm2-135m-instruct"))


@pytest.fixture
def model():
    m = tiny_llama(vocab=49152, hidden=32)
    lk.inject(m, lk.LoraConfig(r=4, alpha=8, targets="all-linear"), name="a")
    return m


def _greedy_by_hand(model, tokenizer, prompt, steps):
    ids = torch.tensor([prompt_ids(tokenizer, prompt)])
    new = []
    with torch.no_grad():
        for _ in range(steps):
            token = int(model(input_ids=ids).logits[0, -1].argmax())
            if token == tokenizer.eos_token_id:
                break
            new.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return tokenizer.decode(new, skip_special_tokens=True)


def test_generate_equals_greedy_loop_without_cache_or_padding(model, tokenizer):
    randomize_adapter(model, "a")
    batched = generate(model, tokenizer, PROMPTS, max_new_tokens=6, batch_size=4)
    assert batched == [_greedy_by_hand(model, tokenizer, p, 6) for p in PROMPTS]


def test_generate_renders_chat_template_and_returns_only_new_text(tokenizer):
    text = render(tokenizer, "Say hello.")
    assert text.startswith("<|im_start|>") and text.endswith("<|im_start|>assistant\n") and "Say hello." in text
    assert render(tokenizer, "plain", chat=False) == "plain"


def test_generate_inside_disabled_is_the_base(model, tokenizer):
    base = tiny_llama(vocab=49152, hidden=32)
    randomize_adapter(model, "a")
    with lk.disabled(model):
        adapted_off = generate(model, tokenizer, PROMPTS, max_new_tokens=5)
    assert adapted_off == generate(base, tokenizer, PROMPTS, max_new_tokens=5)


def test_fresh_adapter_has_drift_exactly_zero(model, tokenizer):
    assert drift_kl(model, tokenizer, general_prompts()[:6], batch_size=4) == 0.0


def test_drift_equals_direct_kl_per_prompt(model, tokenizer):
    randomize_adapter(model, "a", scale=0.05)
    prompts = general_prompts()[:3]
    total, count = 0.0, 0
    for p in prompts:
        ids = torch.tensor([prompt_ids(tokenizer, p)])
        with torch.no_grad(), lk.disabled(model):
            base = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
        with torch.no_grad():
            adapted = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
        total += float(torch.nn.functional.kl_div(adapted, base, log_target=True, reduction="sum"))
        count += ids.shape[1]
    value = drift_kl(model, tokenizer, prompts, batch_size=2)
    assert value > 1e-4
    assert value == pytest.approx(total / count, rel=1e-4)


def test_shipped_general_sets_are_there():
    assert len(general_prompts()) >= 30 and all(isinstance(p, str) and p for p in general_prompts())
    assert len(general_texts()) >= 10
    rows = general_choices()
    assert len(rows) >= 40 and all(r.choices and 0 <= r.answer < len(r.choices) for r in rows)
