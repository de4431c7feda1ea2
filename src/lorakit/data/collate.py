"""Batches: right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 on padding)."""

from __future__ import annotations

import torch

from lorakit.data.encode import IGNORE, Encoded


def collate(examples: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Tensors of shape (batch, longest) for a list of examples."""
    length = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        input_ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        attention_mask[i, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
