"""The model a run trains: base (float or quantised), then the adapter in its variant's form.

Quantisation comes before injection (QLoRA), except for PiSSA/OLoRA, which start from the float weights and
quantise the residual afterwards. AdaLoRA injects SVD-form adapters and adds its callback.
"""

from __future__ import annotations

import torch
from torch import nn

from lorakit.core import bases
from lorakit.core.layers.variants.adalora import inject_adalora
from lorakit.core.model import inject
from lorakit.core.quant import quantize_model
from lorakit.train.adalora import AdaLoraCallback
from lorakit.train.callbacks import Callback
from lorakit.train.config import RunConfig


def build_model(cfg: RunConfig, device: torch.device | str) -> tuple[nn.Module, object, list[Callback]]:
    """``(model with adapter "default", tokenizer, callbacks the variant needs)``; the adapter init is seeded."""
    lora = cfg.lora_config()
    principal = lora.init not in ("default", "gaussian")
    model, tokenizer = bases.load(cfg.base, device=device, quantize=None if principal else cfg.quantize)
    torch.manual_seed(cfg.train.seed)
    callbacks: list[Callback] = []
    if cfg.adalora is not None:
        inject_adalora(model, lora, cfg.adalora.init_r)
        callbacks.append(AdaLoraCallback(cfg.adalora.allocator_config(cfg.train.max_steps)))
    else:
        inject(model, lora)
    if principal and cfg.quantize:
        quantize_model(model, cfg.quantize)
    return model, tokenizer, callbacks
