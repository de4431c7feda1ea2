"""Training precision: ``auto`` picks bf16 autocast where the device runs bf16 matmuls fast, fp32 otherwise.

On CUDA that is any device with native bf16. On a CPU a short probe times a 512×512 matmul in both dtypes: CPUs
with AMX or AVX512-BF16 run bf16 about 3× faster; others run it slower than fp32.

Under bf16 the frozen weights of linear layers are stored once in bf16 (:func:`store_frozen`): autocast would
otherwise cast every one of them to bf16 again on every forward (and keep the copy for backward), work a frozen
weight never needs repeated. Adapters, trainable modules and optimizer state stay fp32, as PEFT keeps them.
"""

from __future__ import annotations

import contextlib
import functools
import time

import torch
from torch import nn


@functools.lru_cache(maxsize=None)
def bf16_is_fast(device_type: str = "cpu") -> bool:
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    timings = {}
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(512, 512, dtype=dtype)
        torch.mm(a, a)
        start = time.perf_counter()
        for _ in range(5):
            torch.mm(a, a)
        timings[dtype] = time.perf_counter() - start
    return timings[torch.float32] > 1.3 * timings[torch.bfloat16]


def resolve(precision: str, device_type: str) -> str:
    """``bf16`` or ``fp32`` for a configured ``auto|bf16|fp32``."""
    if precision == "auto":
        return "bf16" if bf16_is_fast(device_type) else "fp32"
    return precision


def autocast(precision: str, device_type: str):
    """The forward context: bf16 autocast or nothing."""
    if precision == "bf16":
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _is_linear_like(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def store_frozen(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> int:
    """Cast, in place and once, the frozen float weights and biases of every linear-like module (``nn.Linear``,
    transformers' ``Conv1D``, the base layers inside LoRA wrappers) to ``dtype``; return how many values.

    These are exactly the tensors autocast re-casts to ``dtype`` on every forward. Left alone: parameters that
    train (adapters, saved modules, trained biases), quantised weights, norms, embeddings, and an output head
    tied to the input embedding (casting it would round the embedding lookup, and with it the fp32 residual
    stream that autocast keeps). The model's outputs change by the rounding autocast applied anyway. Merging
    afterwards works in fp32 and writes ``dtype``; to export another dtype, merge into a freshly loaded base
    (as ``lorakit export`` does).
    """
    input_embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    tied = {id(p) for p in input_embeddings.parameters()} if input_embeddings is not None else set()
    count = 0
    for module in model.modules():
        if not _is_linear_like(module):
            continue
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or not weight.dtype.is_floating_point or id(weight) in tied:
            continue
        for param in (weight, getattr(module, "bias", None)):
            if isinstance(param, nn.Parameter) and not param.requires_grad and param.dtype != dtype:
                param.data = param.data.to(dtype)
                count += param.numel()
    return count


def compute_dtype(precision: str) -> torch.dtype | None:
    """The dtype frozen weights are stored in for a resolved precision: bf16 for ``bf16``, none for ``fp32``."""
    return torch.bfloat16 if precision == "bf16" else None
