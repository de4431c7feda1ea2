"""Quantised bases for QLoRA (bitsandbytes NF4 with double quantisation, LLM.int8) and dequantisation for merging.

NF4: each block of 64 weights keeps 4-bit indices into the 16 NormalFloat levels plus one absmax scale;
double quantisation stores those absmax scales in 8 bits (blocks of 256 with one fp32 scale and a shared
offset), so a weight costs ``4 + 8/64 + 32/(64·256) ≈ 4.127`` bits instead of 32. Forward dequantises to the
compute dtype and multiplies: ``y = x · deq(W_q)ᵀ + b``; the gradient reaches ``x`` (the LoRA path needs it)
and never the frozen ``W_q``.

int8 (LLM.int8): row-wise absmax int8 weights, ``W ≈ W_q · SCB / 127`` (``SCB`` the per-row scale).
"""

from __future__ import annotations

import torch
from torch import nn

from lorakit.core.errors import ConfigError, ModelLoadError
from lorakit.core.modules import Wrapper, output_head

QUANT_KINDS = ("nf4", "int8")
NF4_BLOCKSIZE = 64


def _bnb():
    try:
        import bitsandbytes
    except ImportError as err:  # pragma: no cover - bitsandbytes is a dependency
        raise ModelLoadError(f"quantised bases need bitsandbytes (pip install 'bitsandbytes>=0.49'): {err}") from None
    return bitsandbytes


def is_quantized(module: nn.Module) -> bool:
    """True for bitsandbytes' 4-bit and 8-bit linear layers."""
    return type(module).__name__ in ("Linear4bit", "Linear8bitLt")


def compute_dtype_for(device: torch.device | str) -> torch.dtype:
    """bf16 where bitsandbytes multiplies it fast (CUDA with bf16 support, CPUs with AVX512-BF16), else fp32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    from bitsandbytes.functional import has_avx512bf16

    return torch.bfloat16 if device.type == "cpu" and has_avx512bf16() else torch.float32


def quantize_model(model: nn.Module, kind: str, *, compute_dtype: torch.dtype | None = None) -> nn.Module:
    """Replace every base ``nn.Linear`` except the output head by its quantised form, in place; returns ``model``.

    ``kind`` is ``nf4`` (4-bit NormalFloat, double-quantised constants) or ``int8`` (LLM.int8). Usually the
    base is quantised and then adapters are injected; a model whose LoRA layers were initialised on the float
    weights (PiSSA/OLoRA, so that the residual is what gets rounded) may be quantised afterwards — the
    linears inside the LoRA wrappers are quantised, adapter weights and trained copies stay float.
    """
    if kind not in QUANT_KINDS:
        raise ConfigError(f"quantize must be one of {', '.join(QUANT_KINDS)} or None, got {kind!r}")
    if any(isinstance(m, Wrapper) and getattr(m, "merged", ()) for m in model.modules()):
        raise ConfigError("cannot quantise a model with merged adapters; unmerge first")
    _bnb()
    head = output_head(model)
    device = next(model.parameters()).device
    if kind == "int8" and device.type not in ("cpu", "cuda", "xpu"):
        raise ConfigError(
            f"int8 (LLM.int8) is not supported by bitsandbytes on {device.type}; use nf4 or no quantisation"
        )
    dtype = compute_dtype or compute_dtype_for(device)
    targets = [
        (name, m)
        for name, m in model.named_modules()
        if type(m) is nn.Linear
        and m is not head
        and m.weight.dtype.is_floating_point
        and not any(part in f".{name}." for part in (".modules_to_save.", ".original_module."))
    ]
    for name, linear in targets:
        quantised = _nf4(linear, dtype) if kind == "nf4" else _int8(linear)
        quantised.train(linear.training)  # the new layer keeps the train/eval mode of the one it replaces
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, quantised.to(device))
    model.__dict__["lorakit_quantize"] = kind
    return model


def _nf4(linear: nn.Linear, compute_dtype: torch.dtype) -> nn.Module:
    bnb = _bnb()
    layer = bnb.nn.Linear4bit(
        linear.in_features,
        linear.out_features,
        bias=linear.bias is not None,
        compute_dtype=compute_dtype,
        compress_statistics=True,
        quant_type="nf4",
        device="meta",
    )
    # bitsandbytes repacks CPU weights for its AVX512 inference kernel on the first no-grad forward, dropping
    # double quantisation and changing the numerics between eval and training; keep one format throughout.
    layer.support_avx512bf16_for_cpu = False
    layer.weight = bnb.nn.Params4bit(
        linear.weight.data.float().contiguous(),
        requires_grad=False,
        compress_statistics=True,
        quant_type="nf4",
        blocksize=NF4_BLOCKSIZE,
        module=layer,
    ).to(linear.weight.device)
    if linear.bias is not None:
        layer.bias = nn.Parameter(linear.bias.data.clone(), requires_grad=False)
    layer.lorakit_float_dtype = linear.weight.dtype
    return layer


def _int8(linear: nn.Linear) -> nn.Module:
    bnb = _bnb()
    layer = bnb.nn.Linear8bitLt(
        linear.in_features,
        linear.out_features,
        bias=linear.bias is not None,
        has_fp16_weights=False,
        threshold=6.0,
        device="meta",
    )
    layer.weight = bnb.nn.Int8Params(
        linear.weight.data.float().contiguous(), requires_grad=False, has_fp16_weights=False
    )
    if linear.bias is not None:
        layer.bias = nn.Parameter(linear.bias.data.clone(), requires_grad=False)
    layer.lorakit_float_dtype = linear.weight.dtype
    return layer.to(linear.weight.device)


def dequantize(module: nn.Module) -> torch.Tensor:
    """The weight of a quantised linear as fp32 ``(out, in)``; a float layer's weight cast to fp32."""
    name = type(module).__name__
    if name == "Linear4bit":
        from bitsandbytes.functional import dequantize_4bit

        return dequantize_4bit(module.weight.data, module.weight.quant_state).float()
    if name == "Linear8bitLt":
        weight = module.weight
        scb = weight.SCB if getattr(weight, "SCB", None) is not None else module.state.SCB
        return weight.data.float() * scb.float().view(-1, 1) / 127.0  # (out, in) · (out, 1)
    return module.weight.data.float()


def set_weight(module: nn.Module, weight: torch.Tensor) -> None:
    """Replace a quantised layer's weight by ``weight`` (fp32 ``(out, in)``), quantising it the same way."""
    bnb = _bnb()
    name = type(module).__name__
    device = weight.device if module.weight.device.type == "meta" else module.weight.device
    if name == "Linear4bit":
        state = module.weight.quant_state
        module.weight = bnb.nn.Params4bit(
            weight.float().contiguous(),
            requires_grad=False,
            compress_statistics=state.nested,
            quant_type=state.quant_type,
            blocksize=state.blocksize,
            module=module,
        ).to(device)
    elif name == "Linear8bitLt":
        module.weight = bnb.nn.Int8Params(
            weight.float().contiguous().cpu(), requires_grad=False, has_fp16_weights=False
        )
        module.state.SCB = None
        module.to(device)
    else:
        raise ConfigError(f"{name} is not a quantised layer")


def storage_bytes(module: nn.Module) -> int:
    """Bytes a layer's weight occupies, quantisation constants included (bias excluded)."""
    weight = module.weight
    total = weight.data.numel() * weight.data.element_size()
    state = getattr(weight, "quant_state", None)
    if state is not None:
        tensors = [state.absmax, state.code]
        if state.nested:
            tensors += [state.state2.absmax, state.state2.code, state.offset]
        total += sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))
    scb = getattr(weight, "SCB", None)
    if isinstance(scb, torch.Tensor):
        total += scb.numel() * scb.element_size()
    return total


def quantized_footprint(model: nn.Module) -> tuple[int, int]:
    """``(bytes of the quantised linear weights with their constants, bytes the same weights take in fp32)``."""
    quantised = fp32 = 0
    for module in model.modules():
        if is_quantized(module):
            quantised += storage_bytes(module)
            fp32 += module.in_features * module.out_features * 4
    return quantised, fp32


def base_footprint(model: nn.Module) -> tuple[int, int]:
    """``(bytes the base takes as held, bytes the same base takes in fp32)``; adapter tensors excluded,
    tied tensors counted once, quantised weights with their constants."""
    quantised = {name for name, module in model.named_modules() if is_quantized(module)}
    held = fp32 = 0
    for name, param in model.named_parameters():
        if ".lora_" in name:
            continue
        owner, _, leaf = name.rpartition(".")
        if owner in quantised and leaf == "weight":
            module = model.get_submodule(owner)
            held += storage_bytes(module)
            fp32 += module.in_features * module.out_features * 4
        else:
            held += param.numel() * param.element_size()
            fp32 += param.numel() * 4
    return held, fp32
