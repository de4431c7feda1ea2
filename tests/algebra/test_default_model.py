"""Adapter algebra on the real default model (SmolLM2-135M-Instruct, tied embeddings): merge export with greedy
token equality, and inspect / compress / combine on a PEFT-made adapter."""

from __future__ import annotations

import pytest
import torch

import lorakit as lk
from lorakit.algebra import combine, compress, export_merged, inspect, load, output_kl
from tests.helpers import randomize_adapter

pytestmark = pytest.mark.slow
PROMPT = "<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def default_base():
    return lk.bases.load("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def adapters(default_base, tmp_path_factory):
    """A lorakit adapter (all linear layers and the tied embedding, randomly perturbed) and a PEFT-made one."""
    from peft import LoraConfig, get_peft_model

    model, _ = default_base
    root = tmp_path_factory.mktemp("real")
    lk.inject(
        model,
        lk.LoraConfig(
            r=8,
            alpha=16,
            targets=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens"],
        ),
    )
    randomize_adapter(model, scale=0.02, seed=11)
    ours = lk.save_adapter(model, root / "ours")
    lk.unload(model)
    peft_model = get_peft_model(
        model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "up_proj"], init_lora_weights=False)
    )
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.mul_(0.05 * 0.7 ** torch.arange(8.0))  # a decaying spectrum, as training gives
    peft_model.save_pretrained(str(root / "peft"))
    peft_model.unload()
    return ours, root / "peft"


def _greedy(model, tokenizer, tokens=12):
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return out[0, ids.shape[1] :].tolist()


def test_merged_default_model_reloads_and_generates_the_same_tokens(default_base, adapters, tmp_path):
    from transformers import AutoModelForCausalLM

    model, tokenizer = default_base
    ours, _ = adapters
    lk.load_adapter(model, ours)
    try:
        expected = _greedy(model, tokenizer)
    finally:
        lk.unload(model)
    result = export_merged([(ours, 1.0)], tmp_path / "merged")
    assert result.untied_embeddings
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert plain.lm_head.weight is not plain.model.embed_tokens.weight
    assert _greedy(plain, tokenizer) == expected


def test_inspect_compress_and_combine_a_peft_made_adapter(default_base, adapters, tmp_path):
    model, tokenizer = default_base
    ours, theirs = adapters
    spectrum = inspect(theirs)
    assert len(spectrum.modules) == 90 and [g.name for g in spectrum.by_kind] == ["q", "v", "up"]
    first = load(theirs).modules[spectrum.modules[0].module]
    dense = torch.linalg.svdvals(first.dense(torch.float64))[:8]
    assert torch.allclose(torch.tensor(spectrum.modules[0].singular_values, dtype=torch.float64), dense, rtol=1e-6)

    report = compress(theirs, tmp_path / "c", energy=0.9)
    assert all(m.kept_energy >= 0.9 - 1e-9 for m in report.modules)
    assert report.bytes_after < report.bytes_before
    ids = tokenizer([PROMPT], return_tensors="pt").input_ids
    assert 0.0 <= output_kl(model, theirs, report.path, ids) < 0.1

    combined = combine([ours, theirs], tmp_path / "cat", weights=[0.5, 0.5], method="cat")
    assert any("zero update" in note for note in combined.notes)
    lk.load_adapter(model, combined.path)
    lk.unload(model)
