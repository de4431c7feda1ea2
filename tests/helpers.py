"""Tiny random models and inputs for tests."""

from __future__ import annotations

import sys

import torch


def tiny_llama(seed: int = 0, vocab: int = 96, hidden: int = 32, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).eval()


def tiny_gpt2(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config).eval()


def tiny_bert(seed: int = 0, labels: int = 3):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_labels=labels,
        max_position_embeddings=64,
    )
    return BertForSequenceClassification(config).eval()


def token_batch(batch: int = 2, length: int = 8, vocab: int = 96, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=generator)


def randomize_adapter(model, name: str = "default", scale: float = 0.1, seed: int = 3) -> None:
    """Give adapter ``name`` non-zero B (and A) so it changes outputs, as training would."""
    from lorakit.core.model import adapter_parameters

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter_parameters(model, name).values():
            p.copy_(torch.randn(p.shape, generator=generator) * scale)


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def run_cli(capsys, monkeypatch, *args: str) -> tuple[int, str, str]:
    """``lorakit ARGS`` in this process, through the same entry point as the installed command."""
    from lorakit.cli.app import main

    monkeypatch.setattr(sys, "argv", ["lorakit", *args])
    try:
        main()
        code = 0
    except SystemExit as done:
        code = done.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err
