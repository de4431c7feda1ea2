"""Kind 4 of issue 11: embeddings whose output the model scales or ties. A LoRA delta on an embedding that
scales its own output (Gemma3) is scaled the same way, as PEFT does; with tied weights, merge, unmerge,
merge_and_unload, a saved-and-reloaded merged model and the merged export are all the unmerged model."""

from __future__ import annotations

import peft
import pytest
import torch
from transformers import AutoModelForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig

import lorakit as lk
from lorakit.core.files import load_adapter
from lorakit.core.modules import unwrap
from tests.helpers import logits, randomize_adapter, tiny_llama, token_batch


def tiny_gemma3(seed: int = 0):
    torch.manual_seed(seed)
    config = Gemma3TextConfig(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=64,
        sliding_window=16,
    )
    return Gemma3ForCausalLM(config).eval()


def test_scaled_embedding_delta_matches_peft_both_ways_and_on_merge(tmp_path):
    ids = token_batch()
    reference = peft.get_peft_model(
        tiny_gemma3(),
        peft.LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=["embed_tokens", "q_proj"]),
    ).eval()
    expected = logits(reference, ids)
    reference.save_pretrained(tmp_path / "peft")
    model = load_adapter(tiny_gemma3(), tmp_path / "peft")
    assert float(unwrap(model.model.embed_tokens).embed_scale) != 1.0  # the case under test: √dim
    torch.testing.assert_close(logits(model, ids), expected, rtol=0, atol=1e-5)
    lk.save_adapter(model, tmp_path / "lorakit")
    back = peft.PeftModel.from_pretrained(tiny_gemma3(), tmp_path / "lorakit").eval()
    torch.testing.assert_close(logits(back, ids), expected, rtol=0, atol=1e-5)
    lk.merge(model)
    torch.testing.assert_close(logits(model, ids), expected, rtol=0, atol=1e-5)


def test_non_scalar_embed_scale_is_refused_by_layer():
    model = tiny_gemma3()
    model.model.embed_tokens.embed_scale = torch.ones(32)
    with pytest.raises(lk.errors.ConfigError, match=r"model\.embed_tokens: .*embed_scale of shape \(32,\)"):
        lk.inject(model, lk.LoraConfig(r=2, alpha=4, targets=["embed_tokens"]))
    assert type(model.model.embed_tokens).__name__ == "Gemma3TextScaledWordEmbedding"


def tied_llama():
    model = tiny_llama()
    model.lm_head.weight = model.model.embed_tokens.weight
    model.config.tie_word_embeddings = True
    return model


TIED_CASES = {
    "lora on embed_tokens": {"targets": ["embed_tokens", "q_proj"]},
    "lora on lm_head": {"targets": ["lm_head", "q_proj"]},
    "lora on both": {"targets": ["embed_tokens", "lm_head"]},
    "lm_head saved": {"targets": ["q_proj"], "modules_to_save": ["lm_head"]},
    "embed_tokens saved": {"targets": ["q_proj"], "modules_to_save": ["embed_tokens"]},
}


@pytest.mark.parametrize("case", list(TIED_CASES))
def test_tied_weights_merge_unmerge_unload_and_export_agree(case, tmp_path):
    ids = token_batch()
    model = tied_llama()
    lk.inject(model, lk.LoraConfig(r=4, alpha=8, **TIED_CASES[case]))
    randomize_adapter(model, scale=0.2)
    unmerged = logits(model, ids)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    lk.merge(model)
    torch.testing.assert_close(logits(model, ids), unmerged, rtol=0, atol=1e-5)
    lk.unmerge(model)  # tied again, weights back
    assert unwrap(model.lm_head).weight is unwrap(model.model.embed_tokens).weight
    assert model.config.tie_word_embeddings
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=1e-6)

    lk.save_adapter(model, tmp_path / "adapter")
    plain = lk.merge_and_unload(model)
    torch.testing.assert_close(logits(plain, ids), unmerged, rtol=0, atol=1e-5)
    plain.save_pretrained(tmp_path / "merged")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    torch.testing.assert_close(logits(reloaded, ids), unmerged, rtol=0, atol=1e-5)


def test_export_uses_the_same_rule(tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    ids = token_batch()
    tied_llama().save_pretrained(tmp_path / "base")
    vocab = {f"w{i}": i for i in range(96)}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="w0")), unk_token="w0"
    )
    tokenizer.save_pretrained(tmp_path / "base")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "base").eval()
    lk.inject(model, lk.LoraConfig(r=4, alpha=8, targets=["embed_tokens", "q_proj"]))
    randomize_adapter(model, scale=0.2)
    unmerged = logits(model, ids)
    lk.save_adapter(model, tmp_path / "adapter")
    result = lk.export_merged([(tmp_path / "adapter", 1.0)], tmp_path / "export", base=str(tmp_path / "base"))
    assert result.untied_embeddings
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "export").eval()
    torch.testing.assert_close(logits(exported, ids), unmerged, rtol=0, atol=1e-5)


def _t5(tie: bool):
    from tests.core.conftest import ARCHS

    arch = ARCHS["t5"]
    model = arch.build()
    model.config.tie_word_embeddings = tie
    return model, arch.inputs()


@pytest.mark.parametrize("tie", [True, False], ids=["tied-head", "untied-head"])
def test_t5_shared_embedding_merge_and_unload_refuses_what_would_reload_wrong(tie):
    from lorakit.core.errors import MergeError
    from tests.helpers import randomize_adapter

    model, _ = _t5(tie)
    lk.inject(model, lk.LoraConfig(r=4, alpha=8, targets=["q", "shared"]))
    randomize_adapter(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(
        MergeError, match=r"layer shared: .*encoder\.embed_tokens, decoder\.embed_tokens.*Target every module"
    ):
        lk.merge_and_unload(model)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert not lk.core.merge.merged_adapters(model)


@pytest.mark.parametrize("tie", [True, False], ids=["tied-head", "untied-head"])
def test_t5_every_embedding_holder_adapted_merges_saves_and_reloads_equal(tie, tmp_path):
    import transformers as tf

    from tests.helpers import randomize_adapter

    model, inputs = _t5(tie)
    lk.inject(model, lk.LoraConfig(r=4, alpha=8, targets=["q", "embed_tokens"]))
    randomize_adapter(model)
    with torch.no_grad():
        unmerged = model(**inputs).logits
        with lk.disabled(model):
            assert (model(**inputs).logits - unmerged).abs().max() > 1e-3  # the embedding adapter acts
    lk.merge_and_unload(model).save_pretrained(tmp_path)
    reloaded = tf.T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert (reloaded(**inputs).logits - unmerged).abs().max() <= 1e-5
