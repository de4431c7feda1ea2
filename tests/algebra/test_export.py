"""lorakit merge: a complete transformers directory that plain transformers loads and that generates what the
unmerged adapter generates, token for token; weights, dtypes, tied embeddings, safe merge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import lorakit as lk
from lorakit.algebra import combine, export_merged
from lorakit.algebra.export import parse_weighted
from lorakit.core.errors import AdapterFileError, BaseMismatchError, ConfigError, MergeError
from tests.helpers import randomize_adapter, run_cli, tiny_llama


def tiny_base_dir(path: Path, seed: int = 0, tied: bool = True) -> Path:
    """A tiny Llama with the default model's real tokenizer (and vocabulary), saved as a transformers directory."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(lk.bases.ensure_default_cached())
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=tied,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        initializer_range=0.2,
    )  # sharper than the default init: greedy decoding does not loop on one token
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def adapter_on(base: Path, out: Path, targets, seed: int, r: int = 4, scale: float = 0.3) -> Path:
    model, _ = lk.bases.load(str(base))
    lk.inject(model, lk.LoraConfig(r=r, alpha=2 * r, targets=targets))
    randomize_adapter(model, seed=seed, scale=scale)
    return lk.save_adapter(model, out)


def greedy(model, tokenizer, prompt: str = "The capital of France is", tokens: int = 12) -> list[int]:
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return out[0, ids.shape[1] :].tolist()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tiny_base_dir(tmp_path_factory.mktemp("base") / "tiny")


def test_merged_export_reloads_with_plain_transformers_and_generates_the_same_tokens(
    base, tmp_path, capsys, monkeypatch
):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter = adapter_on(base, tmp_path / "a", ["q_proj", "v_proj", "down_proj", "embed_tokens"], seed=1)
    model, tokenizer = lk.bases.load(str(base))
    lk.load_adapter(model, adapter)
    expected = greedy(model, tokenizer)
    with lk.disabled(model):
        assert greedy(model, tokenizer) != expected  # the adapter matters

    code, out, err = run_cli(capsys, monkeypatch, "merge", str(adapter), "--out", str(tmp_path / "merged"))
    assert code == 0, err
    assert "saved untied" in out
    files = {p.name for p in (tmp_path / "merged").iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "lorakit_merge.json",
    } <= files
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert plain.lm_head.weight is not plain.model.embed_tokens.weight
    assert json.loads((tmp_path / "merged" / "config.json").read_text())["tie_word_embeddings"] is False
    assert greedy(plain, AutoTokenizer.from_pretrained(tmp_path / "merged")) == expected
    ids = tokenizer("A longer sentence to compare every position of the logits", return_tensors="pt").input_ids
    with torch.no_grad():
        assert (plain(ids).logits - model(ids).logits).abs().max() <= 1e-4


def test_weighted_merge_of_two_adapters_equals_their_exact_cat_combination(base, tmp_path):
    from transformers import AutoModelForCausalLM

    a = adapter_on(base, tmp_path / "a", ["q_proj", "v_proj"], seed=1)
    b = adapter_on(base, tmp_path / "b", ["k_proj", "up_proj"], seed=2, r=6)
    export_merged([(a, 0.7), (b, 0.3)], tmp_path / "merged")
    combined = combine([a, b], tmp_path / "cat", weights=[0.7, 0.3], method="cat").path
    model, tokenizer = lk.bases.load(str(base))
    lk.load_adapter(model, combined)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert plain.lm_head.weight is plain.model.embed_tokens.weight  # nothing touched the tied tensor: it stays tied
    ids = tokenizer("Weighted adapters fold into one set of weights", return_tensors="pt").input_ids
    with torch.no_grad():
        assert (plain(ids).logits - model(ids).logits).abs().max() <= 1e-4
    provenance = json.loads((tmp_path / "merged" / "lorakit_merge.json").read_text())
    assert [p["weight"] for p in provenance["merged"]] == [0.7, 0.3]


def test_dtype_option_and_safe_merge(base, tmp_path):
    from transformers import AutoModelForCausalLM

    adapter = adapter_on(base, tmp_path / "a", ["q_proj"], seed=1)
    export_merged([(adapter, 1.0)], tmp_path / "bf16", dtype="bf16")
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "bf16").dtype == torch.bfloat16
    huge = adapter_on(base, tmp_path / "huge", ["q_proj"], seed=1, scale=400.0)  # |ΔW| ≈ 1e5·r·2 > fp16's 65504
    with pytest.raises(MergeError, match="fp16 overflowed"):
        export_merged([(huge, 1.0)], tmp_path / "fp16", dtype="fp16")
    assert not (tmp_path / "fp16").exists()
    with pytest.raises(ConfigError, match="dtype"):
        export_merged([(adapter, 1.0)], tmp_path / "x", dtype="int8")


def test_broken_or_foreign_adapters_are_refused(base, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    adapter = adapter_on(base, tmp_path / "a", ["q_proj"], seed=1)
    shutil.copytree(
        adapter, tmp_path / "nan"
    )  # a broken file as another tool could leave it (write_adapter refuses NaN)
    tensors = load_file(tmp_path / "nan" / "adapter_model.safetensors")
    key = next(k for k in tensors if k.endswith("lora_B.weight"))
    tensors[key][0, 0] = float("nan")
    save_file(tensors, tmp_path / "nan" / "adapter_model.safetensors")
    with pytest.raises(AdapterFileError, match=r"lora_B\.weight holds 1 non-finite value"):  # refused at read
        export_merged([(tmp_path / "nan", 1.0)], tmp_path / "out")
    other = tiny_base_dir(tmp_path / "other", seed=5)
    foreign = adapter_on(other, tmp_path / "foreign", ["q_proj"], seed=1)
    with pytest.raises(BaseMismatchError, match="fingerprint"):
        export_merged([(foreign, 1.0)], tmp_path / "out", base=str(base))
    assert not (tmp_path / "out").exists()


def test_adapter_specs_parse_weights():
    assert parse_weighted("runs/a:0.7") == ("runs/a", 0.7)
    assert parse_weighted("runs/a") == ("runs/a", 1.0)
    assert parse_weighted("registry:name@3") == ("registry:name@3", 1.0)
    assert parse_weighted("registry:name@3:-0.5") == ("registry:name@3", -0.5)


def test_tied_untying_only_happens_when_a_merged_adapter_touches_the_tied_tensor():
    model = tiny_llama()
    model.lm_head.weight = model.model.embed_tokens.weight
    lk.inject(model, lk.LoraConfig(r=2, alpha=4, targets=["q_proj"]))
    lk.merge(model)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    lk.unmerge(model)
    lk.inject(model, lk.LoraConfig(r=2, alpha=4, targets=["embed_tokens"]), name="emb")
    lk.merge(model, "emb")
    assert model.lm_head.weight is not model.model.embed_tokens.base_layer.weight
    lk.unmerge(model)
    assert model.lm_head.weight is model.model.embed_tokens.base_layer.weight
