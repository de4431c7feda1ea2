"""Batched greedy generation: prompts rendered with the tokenizer's chat template, left-padded, KV-cached."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

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
    """Token ids of the rendered prompt. A chat template carries its own special tokens; plain text gets the tokenizer's."""
    return tokenizer(render(tokenizer, prompt, chat=chat), add_special_tokens=not _templated(tokenizer, prompt, chat))["input_ids"]


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
        ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row):] = 1
    return ids.to(device), mask.to(device)


@torch.inference_mode()
def generate(model: nn.Module, tokenizer, prompts: Sequence[Prompt], *, max_new_tokens: int = 64, batch_size: int = 8,
             chat: bool = True) -> list[str]:
    """Greedy continuations of ``prompts``, one string each, holding only the new text (special tokens dropped).

    Rows are grouped ``batch_size`` at a time, left-padded, and decoded by the model's own ``generate``
    with its KV cache. Whatever adapters are active on ``model`` (or none, inside ``lk.disabled``) apply.
    """
    device = next(model.parameters()).device
    pad = pad_id(tokenizer)
    eos = tokenizer.eos_token_id
    outputs: list[str] = []
    for start in range(0, len(prompts), batch_size):
        rows = [prompt_ids(tokenizer, p, chat=chat) for p in prompts[start:start + batch_size]]
        ids, mask = left_pad(rows, pad, device)
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=pad, eos_token_id=eos, num_beams=1)
        new = out[:, ids.shape[1]:]  # (B, T_new): only the generated tokens
        outputs += tokenizer.batch_decode(new, skip_special_tokens=True)
    return outputs
