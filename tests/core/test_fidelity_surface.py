"""Kind 3 of issue 11: a wrapped module answers the attributes model code reads (``.weight``, its dtype and
device, ``.bias``, ``in_features``, ``num_embeddings``, ``kernel_size``, ``nf``…) exactly as the module it wraps —
a table over layer kinds and dtypes, for LoRA wrappers and saved modules (which answer with the active copy)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

import lorakit as lk
from lorakit.core.layers import LoraLayer, ModulesToSave

KINDS = {  # name -> (module factory, the attributes transformers-style code reads from it)
    "linear": (lambda: nn.Linear(8, 6), ["in_features", "out_features"]),
    "linear_nobias": (lambda: nn.Linear(8, 6, bias=False), ["in_features", "out_features"]),
    "gpt2_conv1d": (lambda: Conv1D(6, 8), ["nf", "nx"]),
    "embedding": (
        lambda: nn.Embedding(20, 8, padding_idx=1),
        ["num_embeddings", "embedding_dim", "padding_idx", "max_norm", "norm_type", "scale_grad_by_freq", "sparse"],
    ),
    "conv1d": (
        lambda: nn.Conv1d(4, 6, 3),
        [
            "in_channels",
            "out_channels",
            "kernel_size",
            "stride",
            "padding",
            "dilation",
            "groups",
            "padding_mode",
            "transposed",
            "output_padding",
        ],
    ),
    "conv2d": (
        lambda: nn.Conv2d(4, 6, (3, 1), stride=2, bias=False),
        ["in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode"],
    ),
    "conv3d": (
        lambda: nn.Conv3d(4, 6, 2),
        ["in_channels", "out_channels", "kernel_size", "stride", "padding", "groups"],
    ),
}
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _model(kind: str, dtype: torch.dtype) -> nn.Module:
    make, _ = KINDS[kind]
    torch.manual_seed(0)
    return nn.ModuleDict({"layer": make(), "other": nn.Linear(8, 8)}).to(dtype)


def _same_surface(wrapped: nn.Module, base: nn.Module, attrs: list[str]) -> None:
    assert wrapped.weight is base.weight
    assert (wrapped.weight.dtype, wrapped.weight.device, wrapped.weight.shape) == (
        base.weight.dtype,
        base.weight.device,
        base.weight.shape,
    )
    assert hasattr(wrapped, "bias") == hasattr(base, "bias")  # an embedding has none: AttributeError on both
    assert getattr(wrapped, "bias", None) is getattr(base, "bias", None)
    for attr in attrs:
        assert getattr(wrapped, attr) == getattr(base, attr), attr
    assert wrapped.training == base.training


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", list(KINDS))
def test_lora_wrapper_answers_like_the_base_module(kind, dtype):
    model = _model(kind, dtype)
    base = model["layer"]
    lk.inject(model, lk.LoraConfig(r=2, alpha=4, targets=["layer"]))
    assert isinstance(model["layer"], LoraLayer)
    _same_surface(model["layer"], base, KINDS[kind][1])
    model.train()
    _same_surface(model["layer"], base, KINDS[kind][1])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", list(KINDS))
def test_saved_module_answers_like_its_active_copy(kind, dtype):
    model = _model(kind, dtype)
    original = model["layer"]
    lk.inject(model, lk.LoraConfig(r=2, alpha=4, targets=["other"], modules_to_save=["layer"]))
    wrapper = model["layer"]
    assert isinstance(wrapper, ModulesToSave)
    trained = wrapper.modules_to_save["default"]
    _same_surface(wrapper, trained, KINDS[kind][1])
    with lk.disabled(model):
        _same_surface(wrapper, original, KINDS[kind][1])
