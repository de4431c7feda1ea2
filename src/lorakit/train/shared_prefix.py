"""Shared-prefix batches: run the tokens every row of a batch starts with once, not once per row.

Chat datasets give every example the same system prompt and template header, often a third of each sequence.
When all rows of a (right-padded) micro-batch begin with the same ``n`` tokens and no label is predicted from
them, the model runs those ``n`` tokens once (batch 1), its per-layer keys and values are broadcast to the
``B`` rows, and the rows' own tokens run on top of that cache at positions ``n, n+1, …``. Each row attends to
exactly the keys and values it would have computed itself, so the hidden states are those of the full forward
(up to float rounding), and autograd sums the ``B`` rows' gradients through the broadcast into the one prefix
computation — the gradient of the same loss, for ``1/B`` of the prefix's cost. The same idea serves shared
prompts in inference engines (vLLM's prefix caching); here it also carries gradients.

Used only where it is exact and safe: a decoder whose forward takes ``position_ids`` and a KV cache and builds
a plain :class:`transformers.DynamicCache` (full attention in every layer), no gradient checkpointing, and
nothing stochastic active while training (a dropout module with ``p > 0``, LoRA dropout, a dropout probability
in the model config) — otherwise rows would share one dropout draw on the prefix. Anything else runs the
ordinary full forward.
"""

from __future__ import annotations

import functools
import inspect

import torch
from torch import nn

from lorakit.core.layers import LoraLayer
from lorakit.core.modules import cache_argument
from lorakit.data.encode import IGNORE

MIN_SHARED = 8
"""Shortest common prefix (tokens) worth a separate forward."""

_DROPOUT_KEYS = ("dropout", "pdrop", "layerdrop")
"""Words in the config keys of a dropout (or layer-drop) probability; a positive one makes a training forward
random. Keys of task heads the decoder does not run (``classifier_dropout``, ``summary_first_dropout``) do not
count."""


def shared_length(input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> int:
    """Tokens ``n`` that every row starts with, all attended, with no label among positions ``1 … n`` (so no
    loss is predicted from a prefix position and every row keeps at least one own token). 0 when shorter than
    :data:`MIN_SHARED` or for a single row. Shapes: all three (B, T)."""
    if input_ids.shape[0] < 2:
        return 0
    same = (input_ids == input_ids[:1]).all(0) & (attention_mask == 1).all(0)  # (T,)
    unlabelled = (labels == IGNORE).all(0)  # (T,): no row has a target at t
    unlabelled[0] = True  # position 0 is never a target
    n = min(int((same & unlabelled).int().cumprod(0).sum()), input_ids.shape[1] - 1)
    if n > 0 and not unlabelled[n]:  # the last shared state would predict a target: keep it in the rows
        n -= 1
    return n if n >= MIN_SHARED else 0


def can_share(body: nn.Module) -> bool:
    """Whether ``body`` (a decoder forward) can run a shared prefix exactly: see the module docstring."""
    config = getattr(body, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return False
    if _checkpointing(body) or _stochastic(body, config):
        return False
    if any(kind != "full_attention" for kind in getattr(config, "layer_types", None) or ()):
        return False
    return _takes_positions_and_cache(type(body))


@functools.cache
def _takes_positions_and_cache(model_class: type) -> bool:
    parameters = inspect.signature(model_class.forward).parameters
    return "position_ids" in parameters and cache_argument(model_class) in parameters


def _checkpointing(body: nn.Module) -> bool:
    """Whether activation (gradient) checkpointing is on: its recomputation runs without a KV cache."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):  # the first replaces the second
        if hasattr(type(body), name):
            return bool(getattr(body, name))
    return False


def _stochastic(body: nn.Module, config) -> bool:
    """Whether ``body``'s forward draws dropout masks: a :class:`~torch.nn.Dropout` with ``p > 0`` in training
    mode, a LoRA adapter's dropout (``F.dropout`` inside the layer) while training, or, with ``body`` training, a
    positive dropout probability in the model config (``attention_dropout``, OPT's ``dropout``, Falcon's
    ``hidden_dropout``, … which the modelling code applies with ``F.dropout`` rather than a module)."""
    for module in body.modules():
        if not module.training:
            continue
        if isinstance(module, nn.Dropout) and module.p > 0:
            return True
        if isinstance(module, LoraLayer) and any(p > 0 for p in module.dropout_p.values()):
            return True
    return body.training and any(
        isinstance(value, float) and value > 0 and any(word in key for word in _DROPOUT_KEYS)
        for key, value in config.to_dict().items()
        if not key.startswith(("classifier", "summary"))
    )


def forward_shared(body: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, n: int):
    """``body``'s output for the rows' own tokens ``input_ids[:, n:]`` (B, T − n) on top of the shared prefix
    ``input_ids[0, :n]`` run once; ``None`` when the model's cache is not a plain per-layer key/value cache
    (the caller then runs the full forward). The hidden states equal the full forward's at positions ``n…``."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    name = cache_argument(type(body))
    prefix = body(input_ids=input_ids[:1, :n], use_cache=True)
    cache = prefix.get(name)
    if type(cache) is not DynamicCache or not all(type(layer) is DynamicLayer for layer in cache.layers):
        return None
    rows = input_ids.shape[0]
    for layer in cache.layers:  # (1, heads, n, dim) -> (B, heads, n, dim): a view, gradients sum back
        layer.keys = layer.keys.expand(rows, -1, -1, -1)
        layer.values = layer.values.expand(rows, -1, -1, -1)
    positions = torch.arange(n, input_ids.shape[1], device=input_ids.device).expand(rows, -1)  # (B, T − n)
    return body(
        input_ids=input_ids[:, n:],
        attention_mask=attention_mask,
        position_ids=positions,
        use_cache=True,
        **{name: cache},
    )
