"""A LoRA on a grouped convolution cannot be merged (PEFT refuses too), so evaluation's merged-speed generation
leaves that layer unmerged and merges the rest: the outputs equal the unmerged model's, the weights come back
exactly, and ``lk.merge`` refuses such a model before writing any weight."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lorakit as lk
from lorakit.core.errors import MergeError
from lorakit.core.layers import LoraConv
from lorakit.core.model import lora_layers
from lorakit.eval.generate import generate, merged_copy
from tests.helpers import randomize_adapter, tiny_llama

PROMPTS = ["Say hello.", "Name a colour", [{"role": "user", "content": "What is two plus two?"}], "ok"]
TARGETS = {"conv only": ["conv"], "conv and attention": ["conv", "q_proj", "v_proj"]}


class GroupedPointwise(nn.Module):
    """A position-wise projection as a grouped ``nn.Conv1d`` (kernel 1, groups 2): ``(batch, seq, in)`` →
    ``(batch, seq, out)``; it stands in for an MLP's ``down_proj``."""

    def __init__(self, features_in: int, features_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(features_in, features_out, 1, groups=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.transpose(1, 2)).transpose(1, 2)


def _model(targets: list[str]) -> nn.Module:
    """The tiny Llama (the default model's vocabulary) with every ``down_proj`` a grouped convolution, and a
    random adapter ``a`` of rank 4 (a multiple of the groups) on ``targets``."""
    model = tiny_llama(vocab=49152, hidden=32)
    torch.manual_seed(1)
    for block in model.model.layers:
        block.mlp.down_proj = GroupedPointwise(block.mlp.down_proj.in_features, block.mlp.down_proj.out_features)
    lk.inject(model, lk.LoraConfig(r=4, alpha=8, targets=targets), name="a")
    randomize_adapter(model, "a", scale=1.0)  # large enough that greedy decoding differs from the base
    return model.eval()


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(lk.bases.resolve("smollm2-135m-instruct"))


@pytest.mark.parametrize("targets", list(TARGETS.values()), ids=list(TARGETS))
def test_merged_copy_leaves_grouped_convolutions_unmerged_with_equal_outputs_and_restores_weights(targets):
    model = _model(targets)
    layers = dict(lora_layers(model))
    assert sum(isinstance(layer, LoraConv) and layer.groups == 2 for layer in layers.values()) == 2
    originals = {name: layer.base_layer.weight for name, layer in layers.items()}
    copies = {name: weight.detach().clone() for name, weight in originals.items()}
    ids = torch.tensor([[1, 5, 7, 9, 11, 13]])
    with torch.no_grad():
        unmerged = model(input_ids=ids).logits
        with lk.disabled(model):
            base = model(input_ids=ids).logits
        assert (unmerged - base).abs().max() > 1e-3, "the adapter should change the outputs"
        with merged_copy(model):
            for name, layer in layers.items():
                assert layer.merged == ([] if isinstance(layer, LoraConv) else ["a"]), name
            torch.testing.assert_close(model(input_ids=ids).logits, unmerged, rtol=1e-4, atol=1e-5)
    for name, layer in layers.items():
        assert layer.merged == [] and layer.base_layer.weight is originals[name]
        assert torch.equal(layer.base_layer.weight, copies[name]), name


@pytest.mark.parametrize("targets", list(TARGETS.values()), ids=list(TARGETS))
def test_generation_with_a_grouped_convolution_adapter_equals_the_unmerged_decode(tokenizer, targets):
    model = _model(targets)
    unmerged = generate(model, tokenizer, PROMPTS, max_new_tokens=6, batch_size=2, merge=False)
    assert generate(model, tokenizer, PROMPTS, max_new_tokens=6, batch_size=2) == unmerged
    with lk.disabled(model):
        assert generate(model, tokenizer, PROMPTS, max_new_tokens=6, batch_size=2) != unmerged


def test_merge_refuses_a_grouped_convolution_before_writing_any_weight():
    model = _model(TARGETS["conv and attention"])  # q_proj of block 0 comes before its down_proj
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(
        MergeError, match=r"layer model\.layers\.0\.mlp\.down_proj\.conv: .*groups=2 cannot be merged .*nothing was"
    ):
        lk.merge(model)
    assert lk.merged_adapters(model) == []
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
