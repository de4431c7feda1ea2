"""Adapter files: PEFT layout, atomic writes, validation before touching the model, PEFT interop both ways."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import lorakit as lk
from lorakit.core.errors import AdapterFileError, AdapterMismatchError, AdapterStateError, BaseMismatchError
from tests.helpers import logits, randomize_adapter, tiny_bert, tiny_gpt2, tiny_llama, token_batch

ATOL = 1e-5


def _saved(tmp_path, model_factory=tiny_llama, **config):
    model = model_factory()
    lk.inject(model, lk.LoraConfig(r=4, alpha=8, **config))
    randomize_adapter(model)
    path = lk.save_adapter(model, tmp_path / "adapter")
    return model, path


def test_save_writes_peft_layout(tmp_path):
    _, path = _saved(tmp_path, targets=["q_proj", "embed_tokens"])
    config = json.loads((path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    assert config["target_modules"] == ["q_proj", "embed_tokens"] and config["task_type"] == "CAUSAL_LM"
    keys = set(load_file(path / "adapter_model.safetensors"))
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert "base_model.model.model.embed_tokens.lora_embedding_B" in keys
    meta = json.loads((path / "lorakit.json").read_text())
    assert meta["base"]["fingerprint"] == lk.bases.fingerprint(tiny_llama())
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]


def test_all_linear_is_saved_as_explicit_module_names(tmp_path):
    _, path = _saved(tmp_path)
    config = json.loads((path / "adapter_config.json").read_text())
    assert config["target_modules"] == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


def test_round_trip_under_another_seed_gives_identical_outputs(tmp_path):
    model, path = _saved(tmp_path, modules_to_save=["lm_head"], bias="all")
    ids = token_batch()
    expected = logits(model, ids)
    torch.manual_seed(1234)
    fresh = tiny_llama()
    lk.load_adapter(fresh, path, name="other")
    assert torch.equal(logits(fresh, ids), expected)
    assert not any(p.requires_grad for p in fresh.parameters())


def test_overwriting_an_adapter_is_atomic(tmp_path, monkeypatch):
    model, path = _saved(tmp_path)
    before = (path / "adapter_model.safetensors").read_bytes()

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("lorakit.core.files.save.safetensors_bytes", crash)
    with pytest.raises(RuntimeError):
        lk.save_adapter(model, path, overwrite=True)
    assert (path / "adapter_model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def _assert_untouched(model, state):
    assert list(model.state_dict()) == list(state)
    assert lk.adapter_names(model) == []


@pytest.mark.parametrize(
    "damage, error, words",
    [
        ("truncate", AdapterFileError, "truncated or corrupt"),
        ("bad_json", AdapterFileError, "adapter_config.json:1: invalid JSON"),
        ("unknown_field", AdapterFileError, "unknown config field 'lora_magic'"),
        ("missing_key", AdapterMismatchError, "missing"),
        ("extra_key", AdapterMismatchError, "unexpected"),
        ("wrong_shape", AdapterMismatchError, "expects shape (4, 32), file has (4, 48)"),
        ("no_weights", AdapterFileError, "no adapter_model.safetensors"),
        ("pickle_only", AdapterFileError, "pickle file"),
    ],
)
def test_bad_adapter_files_raise_and_leave_model_untouched(tmp_path, damage, error, words):
    _, path = _saved(tmp_path, targets=["q_proj"])
    weights = path / "adapter_model.safetensors"
    tensors = load_file(weights)
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "bad_json":
        (path / "adapter_config.json").write_text("{not json")
    elif damage == "unknown_field":
        config = json.loads((path / "adapter_config.json").read_text())
        config["lora_magic"] = 1
        (path / "adapter_config.json").write_text(json.dumps(config))
    elif damage == "missing_key":
        del tensors[key]
        save_file(tensors, weights)
    elif damage == "extra_key":
        tensors["base_model.model.model.layers.0.self_attn.x_proj.lora_A.weight"] = torch.zeros(4, 32)
        save_file(tensors, weights)
    elif damage == "wrong_shape":
        tensors[key] = torch.zeros(4, 48)
        save_file(tensors, weights)
    elif damage == "no_weights":
        weights.unlink()
    elif damage == "pickle_only":
        weights.rename(path / "adapter_model.bin")
    model = tiny_llama()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        lk.load_adapter(model, path)
    _assert_untouched(model, state)


def test_base_fingerprint_mismatch_is_an_error_unless_allowed(tmp_path):
    _, path = _saved(tmp_path, targets=["q_proj"])
    other = tiny_llama(seed=7)
    with pytest.raises(BaseMismatchError, match="fingerprint"):
        lk.load_adapter(other, path)
    assert lk.adapter_names(other) == []
    with pytest.warns(UserWarning, match="fingerprint"):
        lk.load_adapter(other, path, allow_base_mismatch=True)
    assert lk.adapter_names(other) == ["default"]


def test_fingerprint_ignores_dtype_and_adapters():
    model = tiny_llama()
    fp = lk.bases.fingerprint(model)
    assert lk.bases.fingerprint(tiny_llama().to(torch.bfloat16)) == fp
    lk.inject(model, lk.LoraConfig(r=4))
    assert lk.bases.fingerprint(model) == fp
    assert lk.bases.fingerprint(tiny_llama(seed=1)) != fp


def test_loading_an_existing_name_is_an_error(tmp_path):
    model, path = _saved(tmp_path)
    with pytest.raises(AdapterStateError, match="already exists"):
        lk.load_adapter(model, path)


# --- PEFT interop -------------------------------------------------------------------------------------


def _peft_logits(model_factory, path, ids):
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(model_factory(), str(path))
    peft_model.eval()
    with torch.no_grad():
        return peft_model(input_ids=ids).logits


@pytest.mark.parametrize(
    "factory, config",
    [
        (tiny_llama, dict()),
        (tiny_llama, dict(targets=["q_proj", "v_proj", "embed_tokens"], use_rslora=True, rank_pattern={"v_proj": 2})),
        (tiny_llama, dict(targets=["q_proj"], modules_to_save=["lm_head"], layers=[1])),
        (tiny_gpt2, dict(targets=["c_attn", "c_proj", "c_fc"])),
    ],
    ids=["llama-all-linear", "llama-rslora-embedding-rank-pattern", "llama-saved-head-layers", "gpt2-conv1d"],
)
def test_lorakit_adapter_loads_in_peft_with_same_outputs(tmp_path, factory, config):
    model, path = _saved(tmp_path, factory, **config)
    ids = token_batch()
    assert (_peft_logits(factory, path, ids) - logits(model, ids)).abs().max() <= ATOL


@pytest.mark.parametrize(
    "factory, peft_kwargs",
    [
        (tiny_llama, dict(target_modules="all-linear")),
        (tiny_llama, dict(target_modules=["q_proj", "embed_tokens"], modules_to_save=["lm_head"], bias="lora_only")),
        (tiny_gpt2, dict(target_modules=["c_attn", "c_proj"], fan_in_fan_out=True, use_rslora=True)),
    ],
    ids=["llama-all-linear", "llama-embedding-head-bias", "gpt2-conv1d-rslora"],
)
def test_peft_adapter_loads_in_lorakit_with_same_outputs(tmp_path, factory, peft_kwargs):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(factory(), LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, **peft_kwargs))
    peft_model.eval()
    peft_model.save_pretrained(str(tmp_path / "peft"))
    ids = token_batch()
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
    model = lk.load_adapter(factory(), tmp_path / "peft")
    assert (logits(model, ids) - expected).abs().max() <= ATOL


def test_bert_sequence_classification_interop_with_head_in_modules_to_save(tmp_path):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(
        tiny_bert(), LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"], init_lora_weights=False)
    )
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "modules_to_save" in name:
                p.add_(0.5)
    peft_model.eval()
    peft_model.save_pretrained(str(tmp_path / "peft"))
    ids = token_batch()
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
    model = lk.load_adapter(tiny_bert(), tmp_path / "peft")
    assert (logits(model, ids) - expected).abs().max() <= ATOL
    lk.save_adapter(model, tmp_path / "ours")
    assert (_peft_seq_cls_logits(tmp_path / "ours", ids) - expected).abs().max() <= ATOL


def _peft_seq_cls_logits(path, ids):
    from peft import PeftModel

    model = PeftModel.from_pretrained(tiny_bert(), str(path)).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits
