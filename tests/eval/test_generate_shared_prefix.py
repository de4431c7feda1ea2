"""Evaluation's generation runs the prompts' common token prefix (a chat system prompt) once and starts every
row from its keys and values: greedy outputs equal those without the shared prefix and those of each prompt
generated alone, on every decoder; models whose cache could not be reused that way decode without it."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

import lorakit as lk
from lorakit.eval import generate as generate_module
from lorakit.eval.generate import MIN_SHARED, generate, prompt_ids, shared_prefix
from tests.core.conftest import ARCHS
from tests.helpers import randomize_adapter

SYSTEM = "You are a careful support assistant. Answer in one short sentence and never add a greeting."
QUESTIONS = ["Hi", "What is two plus two?", "Name three animals that live in the sea, then stop.", "Why?", "ok"]
PROMPTS = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}] for q in QUESTIONS]
BATCH = 3  # two batches (3 + 2 rows), each starting from its own copy of the prefix cache


@pytest.fixture(scope="module")
def tokenizer():
    return tf.AutoTokenizer.from_pretrained(lk.bases.resolve("smollm2-135m-instruct"))


def _model(arch: str, vocab: int, **config) -> torch.nn.Module:
    """Tiny ``arch`` of the parity suite with the tokenizer's vocabulary, room for the prompts, ``config``
    overrides, and a random all-linear adapter."""
    spec = ARCHS[arch]
    settings = spec.config()
    positions = "n_positions" if hasattr(settings, "n_positions") else "max_position_embeddings"
    for key, value in {"vocab_size": vocab, positions: 128, **config}.items():
        setattr(settings, key, value)
    torch.manual_seed(0)
    model = spec.model_cls(settings).eval()
    lk.inject(model, lk.LoraConfig(r=4, alpha=8, targets="all-linear"), name="a")
    randomize_adapter(model, "a", scale=0.2)
    return model


def _set_cache_implementation(model):
    model.generation_config.cache_implementation = "static"


ARCH_CASES = {  # name: (arch, config overrides, change to the model, shared prefix used)
    "llama": ("llama", {}, None, True),
    "qwen2": ("qwen2", {}, None, True),
    "qwen3": ("qwen3", {}, None, True),
    "gemma": ("gemma", {}, None, True),
    "phi3": ("phi3", {}, None, True),
    "gpt2": ("gpt2", {}, None, True),
    "gpt_neox": ("gpt_neox", {}, None, True),
    "opt": ("opt", {}, None, True),
    "falcon": ("falcon", {}, None, True),
    "bloom": ("bloom", {}, None, True),
    # a sliding window counts cache slots, so the padding after the prefix would shift it: not shared
    "mistral, sliding window shorter than the prompts": ("mistral", {"sliding_window": 8}, None, False),
    "gemma3, sliding window shorter than the prompts": ("gemma3", {"sliding_window": 8}, None, False),
    # generate builds its own cache kind, or none: the prefix cache is not passed
    "llama, static cache_implementation": ("llama", {}, _set_cache_implementation, False),
    "mpt, no cache in generate": ("mpt", {}, None, False),
}


def _decode(model, tokenizer, prompts, **kwargs):
    """``(outputs, input shapes the embedding saw)``."""
    shapes: list[tuple[int, ...]] = []
    hook = model.get_input_embeddings().register_forward_hook(lambda m, args, out: shapes.append(tuple(args[0].shape)))
    try:
        return generate(model, tokenizer, prompts, max_new_tokens=6, **kwargs), shapes
    finally:
        hook.remove()


@pytest.mark.parametrize("case", list(ARCH_CASES))
def test_shared_prefix_decodes_as_without_it_and_as_each_prompt_alone(tokenizer, monkeypatch, case):
    arch, config, change, used = ARCH_CASES[case]
    model = _model(arch, len(tokenizer), **config)
    if change:
        change(model)
    rows = [prompt_ids(tokenizer, p) for p in PROMPTS]
    n = shared_prefix(rows)
    assert n >= MIN_SHARED
    outputs, shapes = _decode(model, tokenizer, PROMPTS, batch_size=BATCH)
    first = sorted(rows, key=len)[:BATCH]  # the shortest prompts decode first
    if used:
        assert shapes[:2] == [(1, n), (BATCH, max(map(len, first)) - n)]  # prefix once, then only own tokens
    else:
        assert (1, n) not in shapes[1:] and (BATCH, max(map(len, first))) in shapes[:2]  # whole prompts prefilled
    alone = [generate(model, tokenizer, [p], max_new_tokens=6)[0] for p in PROMPTS]
    with monkeypatch.context() as patch:
        patch.setattr(generate_module, "MIN_SHARED", 10**9)
        unshared, unshared_shapes = _decode(model, tokenizer, PROMPTS, batch_size=BATCH)
    assert all(shape[0] > 1 for shape in unshared_shapes)
    assert any(text for text in outputs)
    assert outputs == unshared == alone


def test_generation_without_an_adapter_also_matches(tokenizer):
    model = _model("llama", len(tokenizer))
    with lk.disabled(model):
        outputs = generate(model, tokenizer, PROMPTS, max_new_tokens=6, batch_size=BATCH)
        alone = [generate(model, tokenizer, [p], max_new_tokens=6)[0] for p in PROMPTS]
    assert outputs == alone
    assert outputs != generate(model, tokenizer, PROMPTS, max_new_tokens=6, batch_size=BATCH)  # the adapter counts


_ROW = list(range(100, 112))  # 12 tokens
SHARED = {
    "no rows": ([], 0),
    "one row": ([_ROW], 0),
    "no common prefix": ([_ROW, [1] + _ROW[1:]], 0),
    "one fewer than MIN_SHARED": ([_ROW, _ROW[: MIN_SHARED - 1] + [1, 2]], 0),
    "exactly MIN_SHARED": ([_ROW, _ROW[:MIN_SHARED] + [1, 2]], MIN_SHARED),
    "the common prefix of three rows is the shortest": ([_ROW, _ROW[:10] + [1], _ROW[:9] + [2, 3]], 9),
    "a row that is the prefix keeps one own token": ([_ROW, _ROW[:10]], 9),
    "identical rows keep one own token": ([_ROW, _ROW, _ROW], 11),
}


@pytest.mark.parametrize("case", list(SHARED))
def test_shared_prefix_length(case):
    rows, expected = SHARED[case]
    assert shared_prefix(rows) == expected
