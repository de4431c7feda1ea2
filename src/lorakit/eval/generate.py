"""Batched greedy generation for evaluation, at merged speed.

Prompts are rendered with the tokenizer's chat template, sorted by length (so a batch pads little), left-padded
and decoded greedily with the model's KV cache; results come back in the prompts' order. The token prefix every
prompt shares (an evaluation set's system prompt and template, typically half of each prompt) is run once and its
keys and values copied to every row of a batch, so prefill costs only each row's own tokens: rows are laid out
as ``[shared prefix | left padding | own tokens]`` with the padding masked, and position ids follow the
attention mask, so each row sees exactly the positions and context it would alone. The active adapters
are folded into a copy of the weights they touch for the duration (:func:`merged_copy`), so each decode step
costs what the base model costs; the original weights are put back exactly afterwards.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from lorakit.core.errors import MergeError
from lorakit.core.layers import LoraLayer
from lorakit.core.modules import cache_argument

Prompt = str | list[dict]


def _templated(tokenizer, prompt: Prompt, chat: bool) -> bool:
    return isinstance(prompt, list) or (chat and getattr(tokenizer, "chat_template", None) is not None)


def render(tokenizer, prompt: Prompt, *, chat: bool = True) -> str:
    """The text the model sees for ``prompt``.

    A message list is rendered with the tokenizer's chat template and the generation prompt. A string is
    treated as one user message when ``chat`` is true and the tokenizer has a template; otherwise it is used
    as it is (plain completion).
    """
    if not _templated(tokenizer, prompt, chat):
        return prompt
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def prompt_ids(tokenizer, prompt: Prompt, *, chat: bool = True) -> list[int]:
    """Token ids of the rendered prompt.
    A chat template carries its own special tokens; plain text gets the tokenizer's.
    """
    return tokenizer(render(tokenizer, prompt, chat=chat), add_special_tokens=not _templated(tokenizer, prompt, chat))[
        "input_ids"
    ]


def pad_id(tokenizer) -> int:
    """The padding id: the tokenizer's pad token, else its end-of-sequence token, else 0."""
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    return 0


def left_pad(rows: list[list[int]], pad: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)``, both (B, T_max), with padding on the left so every row ends at T_max."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row) :] = 1
    return ids.to(device), mask.to(device)


MIN_SHARED = 8
"""Shortest common prefix (tokens) worth running once for a batch; shorter ones are left in each row."""


def shared_prefix(rows: Sequence[Sequence[int]]) -> int:
    """Length of the token prefix all ``rows`` share, leaving at least one token of each row its own
    (0 when it is shorter than :data:`MIN_SHARED` or there are fewer than two rows)."""
    if len(rows) < 2:
        return 0
    first, n = rows[0], min(len(r) for r in rows) - 1
    for row in rows[1:]:
        n = next((i for i in range(n) if row[i] != first[i]), n)
    return n if n >= MIN_SHARED else 0


def _prefix_cache(model: nn.Module, prefix: list[int], device: torch.device):
    """The KV cache of ``prefix`` (batch 1), or None when reusing it would not be exact: the model's
    ``generate`` keeps no cache or builds its own kind (``cache_implementation``: static, hybrid, …), or a layer's
    cache is not a plain full-attention one (a sliding window counts cache slots, and the left padding between
    the prefix and a row's own tokens would shift it)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    settings = getattr(model, "generation_config", None)
    if settings is None or not settings.use_cache or settings.cache_implementation not in (None, "dynamic"):
        return None
    out = model(input_ids=torch.tensor([prefix], device=device), use_cache=True)
    cache = out.get(cache_argument(type(model)))
    if type(cache) is not DynamicCache or not all(type(layer) is DynamicLayer for layer in cache.layers):
        return None
    return cache


def auto_batch_size(device: torch.device) -> int:
    """Rows decoded together: 64 on an accelerator; on a CPU 4 per thread, between 16 and 32 (a decode step is
    bound by reading the weights, so wider batches share that read until the matmuls become compute-bound)."""
    if device.type != "cpu":
        return 64
    return max(16, min(32, 4 * torch.get_num_threads()))


@contextlib.contextmanager
def merged_copy(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block each LoRA layer's active, unmerged adapters are folded into a new weight tensor
    ``W₀ + Σ ΔW`` (in the base dtype; DoRA's rescaled form), and the layer counts them as merged, so forward
    skips the low-rank path. On exit the original tensors are put back untouched (no subtract-and-round).

    Left unmerged, running the low-rank path with the same outputs: quantised bases (merging would dequantise
    them), layers routing rows to adapters, disabled layers, and layers that cannot merge at all
    (:meth:`~lorakit.core.layers.base.LoraLayer.merge_refusal`: a LoRA on a grouped convolution). Costs one
    extra copy of each merged weight while the block runs. Raises :class:`~lorakit.core.errors.MergeError`
    (naming the layer) if a merge would produce NaN/inf.
    """
    touched: list[tuple[LoraLayer, torch.Tensor, int]] = []
    try:
        with torch.no_grad():
            for layer in model.modules():
                if (
                    not isinstance(layer, LoraLayer)
                    or layer.routing is not None
                    or _is_quantized(layer)
                    or layer.merge_refusal() is not None
                ):
                    continue
                names = layer._unmerged_active()
                if not names:
                    continue
                weight = layer.read_weight()  # fp32, the base layout
                base = layer.original_weight() if layer.merged else weight  # W₀: DoRA's norm is of W₀ + its own ΔW
                for name in names:
                    weight = layer.merged_weight(name, weight, base)
                if not torch.isfinite(weight).all():
                    raise MergeError(
                        f"layer {layer.path}: merging adapters {list(names)} would write NaN/inf; the adapter is broken"
                    )
                target = layer._base_weight()
                touched.append((layer, target.data, len(layer.merged)))
                target.data = weight.to(target.dtype)
                layer.merged.extend(names)
        yield model
    finally:
        for layer, original, merged in reversed(touched):
            layer._base_weight().data = original
            del layer.merged[merged:]


def _is_quantized(layer: LoraLayer) -> bool:
    is_quantized = getattr(layer, "is_quantized", None)
    return bool(is_quantized and is_quantized())


@torch.inference_mode()
def generate(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int = 64,
    batch_size: int | None = None,
    chat: bool = True,
    merge: bool = True,
) -> list[str]:
    """Greedy continuations of ``prompts``, one string each, holding only the new text (special tokens dropped).

    Rows are sorted by prompt length and decoded ``batch_size`` at a time (default :func:`auto_batch_size`),
    left-padded, by the model's own ``generate`` with its KV cache; a row stops at its end-of-sequence token or
    after ``max_new_tokens`` (pass the task's known answer length). Whatever adapters are active on ``model``
    (or none, inside ``lk.disabled``) apply — merged into a copy of the weights while decoding unless ``merge``
    is false. Results are in the order of ``prompts``.
    """
    device = next(model.parameters()).device
    pad = pad_id(tokenizer)
    eos = tokenizer.eos_token_id
    batch_size = batch_size or auto_batch_size(device)
    rows = [prompt_ids(tokenizer, p, chat=chat) for p in prompts]
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    outputs: list[str] = [""] * len(rows)
    with merged_copy(model) if merge else contextlib.nullcontext():
        shared = 0 if getattr(getattr(model, "config", None), "is_encoder_decoder", False) else shared_prefix(rows)
        cache = _prefix_cache(model, rows[0][:shared], device) if shared else None
        shared = shared if cache is not None else 0
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            ids, mask = left_pad([rows[i][shared:] for i in chunk], pad, device)
            extra = {}
            if shared:
                prefix = torch.tensor(rows[0][:shared], device=device).expand(len(chunk), shared)
                ids, mask = torch.cat([prefix, ids], 1), torch.cat([torch.ones_like(prefix), mask], 1)
                rows_cache = copy.deepcopy(cache)
                rows_cache.batch_repeat_interleave(len(chunk))  # every row starts from the shared prefix's keys/values
                extra[cache_argument(type(model))] = rows_cache
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
                eos_token_id=eos,
                num_beams=1,
                **extra,
            )
            new = out[:, ids.shape[1] :]  # (B, T_new): only the generated tokens
            for i, text in zip(chunk, tokenizer.batch_decode(new, skip_special_tokens=True)):
                outputs[i] = text
    return outputs
