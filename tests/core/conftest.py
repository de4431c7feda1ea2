"""Tiny random models of every architecture the parity suite covers, with their inputs and default targets.

Each :class:`Arch` builds a fresh model from a seed (hidden ≤ 64, 2 layers, nothing downloaded), gives its
forward inputs, and names the modules a core option set targets on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import transformers as tf

VOCAB, HIDDEN, SEQ = 96, 32, 8
_IDS = torch.randint(3, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(1))


@dataclass(frozen=True)
class Arch:
    """An architecture of the suite: ``build()`` a tiny model, its forward ``inputs``, the ``targets`` of the core
    cells, and the ``head`` saved with ``modules_to_save`` (a task head or ``lm_head``)."""

    name: str
    config: Callable[[], object]
    model_cls: Callable
    targets: list[str]
    head: str
    inputs: Callable[[], dict] = field(default=lambda: {"input_ids": _IDS})

    def build(self, seed: int = 0) -> torch.nn.Module:
        torch.manual_seed(seed)
        return self.model_cls(self.config()).eval()


def _decoder(cfg_cls, **extra):
    common = dict(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    common.update(extra)
    return lambda: cfg_cls(**common)


def _seq2seq_inputs() -> dict:
    return {"input_ids": _IDS, "decoder_input_ids": _IDS[:, :5]}


def _whisper_inputs() -> dict:
    features = torch.randn(2, 16, 20, generator=torch.Generator().manual_seed(4))
    return {"input_features": features, "decoder_input_ids": _IDS[:, :5]}


def _vit_inputs() -> dict:
    return {"pixel_values": torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))}


_QV = ["q_proj", "v_proj"]
ARCHS = {
    a.name: a
    for a in [
        Arch("llama", _decoder(tf.LlamaConfig), tf.LlamaForCausalLM, _QV, "lm_head"),
        Arch("qwen2", _decoder(tf.Qwen2Config), tf.Qwen2ForCausalLM, _QV, "lm_head"),
        Arch("qwen3", _decoder(tf.Qwen3Config, head_dim=8), tf.Qwen3ForCausalLM, _QV, "lm_head"),
        Arch("mistral", _decoder(tf.MistralConfig), tf.MistralForCausalLM, _QV, "lm_head"),
        Arch("gemma", _decoder(tf.GemmaConfig, head_dim=8), tf.GemmaForCausalLM, _QV, "lm_head"),
        Arch("gemma2", _decoder(tf.Gemma2Config, head_dim=8), tf.Gemma2ForCausalLM, _QV, "lm_head"),
        Arch("gemma3", _decoder(tf.Gemma3TextConfig, head_dim=8), tf.Gemma3ForCausalLM, _QV, "lm_head"),
        Arch(
            "phi3", _decoder(tf.Phi3Config, pad_token_id=0), tf.Phi3ForCausalLM, ["qkv_proj", "gate_up_proj"], "lm_head"
        ),
        Arch(
            "gpt2",
            lambda: tf.GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=2, n_head=4, n_positions=64),
            tf.GPT2LMHeadModel,
            ["c_attn", "c_proj"],
            "lm_head",
        ),
        Arch(
            "gpt_neox",
            lambda: tf.GPTNeoXConfig(
                vocab_size=VOCAB,
                hidden_size=HIDDEN,
                intermediate_size=2 * HIDDEN,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=64,
            ),
            tf.GPTNeoXForCausalLM,
            ["query_key_value", "dense_h_to_4h"],
            "lm_head",
        ),
        Arch(
            "gptj",
            lambda: tf.GPTJConfig(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=2, n_head=4, n_positions=64, rotary_dim=4),
            tf.GPTJForCausalLM,
            _QV,
            "lm_head",
        ),
        Arch(
            "falcon",
            lambda: tf.FalconConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=4),
            tf.FalconForCausalLM,
            ["query_key_value", "dense_h_to_4h"],
            "lm_head",
        ),
        Arch(
            "opt",
            lambda: tf.OPTConfig(
                vocab_size=VOCAB,
                hidden_size=HIDDEN,
                ffn_dim=2 * HIDDEN,
                num_hidden_layers=2,
                num_attention_heads=4,
                word_embed_proj_dim=HIDDEN,
                max_position_embeddings=64,
            ),
            tf.OPTForCausalLM,
            _QV,
            "lm_head",
        ),
        Arch(
            "bloom",
            lambda: tf.BloomConfig(vocab_size=VOCAB, hidden_size=HIDDEN, n_layer=2, n_head=4),
            tf.BloomForCausalLM,
            ["query_key_value", "dense_4h_to_h"],
            "lm_head",
        ),
        Arch(
            "mpt",
            lambda: tf.MptConfig(vocab_size=VOCAB, d_model=HIDDEN, n_layers=2, n_heads=4, max_seq_len=64),
            tf.MptForCausalLM,
            ["Wqkv", "up_proj"],
            "lm_head",
        ),
        Arch("stablelm", _decoder(tf.StableLmConfig), tf.StableLmForCausalLM, _QV, "lm_head"),
        Arch("olmo", _decoder(tf.OlmoConfig, pad_token_id=0), tf.OlmoForCausalLM, _QV, "lm_head"),
        Arch(
            "mixtral",
            _decoder(tf.MixtralConfig, num_local_experts=2, num_experts_per_tok=1),
            tf.MixtralForCausalLM,
            _QV,
            "lm_head",
        ),
        Arch(
            "t5",
            lambda: tf.T5Config(
                vocab_size=VOCAB,
                d_model=HIDDEN,
                d_kv=8,
                d_ff=2 * HIDDEN,
                num_layers=2,
                num_heads=4,
                decoder_start_token_id=0,
            ),
            tf.T5ForConditionalGeneration,
            ["q", "v"],
            "lm_head",
            _seq2seq_inputs,
        ),
        Arch(
            "bart",
            lambda: tf.BartConfig(
                vocab_size=VOCAB,
                d_model=HIDDEN,
                encoder_layers=2,
                decoder_layers=2,
                encoder_attention_heads=4,
                decoder_attention_heads=4,
                encoder_ffn_dim=2 * HIDDEN,
                decoder_ffn_dim=2 * HIDDEN,
                max_position_embeddings=64,
            ),
            tf.BartForConditionalGeneration,
            _QV,
            "lm_head",
            _seq2seq_inputs,
        ),
        Arch(
            "whisper",
            lambda: tf.WhisperConfig(
                vocab_size=VOCAB,
                d_model=HIDDEN,
                encoder_layers=2,
                decoder_layers=2,
                encoder_attention_heads=4,
                decoder_attention_heads=4,
                encoder_ffn_dim=2 * HIDDEN,
                decoder_ffn_dim=2 * HIDDEN,
                num_mel_bins=16,
                max_source_positions=10,
                max_target_positions=32,
                decoder_start_token_id=1,
                pad_token_id=0,
            ),
            tf.WhisperForConditionalGeneration,
            _QV,
            "proj_out",
            _whisper_inputs,
        ),
        Arch(
            "bert",
            lambda: tf.BertConfig(
                vocab_size=VOCAB,
                hidden_size=HIDDEN,
                intermediate_size=2 * HIDDEN,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=64,
                num_labels=3,
            ),
            tf.BertForSequenceClassification,
            ["query", "value"],
            "classifier",
        ),
        Arch(
            "roberta",
            lambda: tf.RobertaConfig(
                vocab_size=VOCAB,
                hidden_size=HIDDEN,
                intermediate_size=2 * HIDDEN,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=70,
                pad_token_id=0,
                num_labels=3,
            ),
            tf.RobertaForSequenceClassification,
            ["query", "value"],
            "classifier",
        ),
        Arch(
            "deberta_v2",
            lambda: tf.DebertaV2Config(
                vocab_size=VOCAB,
                hidden_size=HIDDEN,
                intermediate_size=2 * HIDDEN,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=64,
                num_labels=3,
                pooler_hidden_size=HIDDEN,
            ),
            tf.DebertaV2ForSequenceClassification,
            ["query_proj", "value_proj"],
            "classifier",
        ),
        Arch(
            "vit",
            lambda: tf.ViTConfig(
                image_size=16,
                patch_size=8,
                num_channels=3,
                hidden_size=HIDDEN,
                intermediate_size=2 * HIDDEN,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_labels=3,
            ),
            tf.ViTForImageClassification,
            ["q_proj", "v_proj"],
            "classifier",
            _vit_inputs,
        ),
    ]
}
