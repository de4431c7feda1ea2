"""``precision: auto``: bf16 autocast where the device runs bf16 matmuls fast, fp32 otherwise.

On CUDA that is any device with native bf16. On a CPU a short probe times a 512×512 matmul in both dtypes: CPUs
with AMX or AVX512-BF16 run bf16 about 3× faster; others run it slower than fp32.
"""

from __future__ import annotations

import contextlib
import functools
import time

import torch


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
