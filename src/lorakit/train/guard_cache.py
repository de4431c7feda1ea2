"""The drift guard's base distributions, kept in the run directory so a resumed run does not recompute them.

``<output>/drift_guard_base.safetensors`` holds, for each guard batch ``b``: ``input_ids.b`` and
``attention_mask.b`` (B, T) — the general text, with the base's greedy answers already appended — and, at the
batch's real positions in row-major order, ``top_ids.b`` (n, k) int64, ``top.b`` (n, k) and ``tail.b`` (n,)
fp32 log-probabilities of the base (see :mod:`lorakit.train.drift_guard`). Its metadata ``key`` is a sha256 over
the base fingerprint, the guard data file's sha256, the tokenizer's vocabulary size and chat template, the
autocast precision and the guard settings that shape the cache; a file with another key is ignored and
rewritten. The file is written atomically by the main process; every process reads it whole and takes its rows.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from lorakit.core import bases
from lorakit.core.files import atomic
from lorakit.train.objective_config import DriftGuardSection

CACHE_FILE = "drift_guard_base.safetensors"
_SHAPING = ("data", "batch_size", "top_k", "respond_tokens", "max_length")


@dataclass
class GuardBatch:
    """One guard batch with the base's top-``k`` distributions at its real positions (row-major order)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    ids: torch.Tensor
    top: torch.Tensor
    tail: torch.Tensor

    def share(self, rank: int, world: int) -> "GuardBatch | None":
        """Rows ``rank, rank + world, ...`` with their positions' cached values (``None`` when there are none).

        Padding columns no kept row needs are cut, so the share is what collating those rows alone would give.
        """
        rows = torch.arange(rank, len(self.input_ids), world)
        if len(rows) == 0:
            return None
        mask = self.attention_mask.bool()
        row_of = torch.arange(len(mask))[:, None].expand_as(mask)[mask]  # (n,): the row of each cached position
        keep = (row_of % world) == rank
        width = int(mask[rows].sum(1).max())
        return GuardBatch(
            self.input_ids[rows, :width],
            self.attention_mask[rows, :width],
            self.ids[keep],
            self.top[keep],
            self.tail[keep],
        )

    def to(self, device: torch.device) -> "GuardBatch":
        return GuardBatch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.ids, self.top, self.tail)))


def cache_key(model: torch.nn.Module, tokenizer, section: DriftGuardSection, data_sha256: str, precision: str) -> str:
    """What the cached distributions depend on, hashed (sha256 hex)."""
    parts = {
        "base": bases.fingerprint(model),
        "data": data_sha256,
        "precision": precision,
        "vocab": len(tokenizer),
        "template": getattr(tokenizer, "chat_template", None) or "",
        "guard": {k: getattr(section, k) for k in _SHAPING},
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def read(path: Path, key: str) -> list[GuardBatch] | None:
    """The batches cached at ``path`` under ``key``; ``None`` when the file is absent, unreadable or for another key."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as opened:
            if (opened.metadata() or {}).get("key") != key:
                return None
        tensors = load_file(path)
    except (SafetensorError, OSError):
        return None
    count = sum(1 for name in tensors if name.startswith("input_ids."))
    fields = ("input_ids", "attention_mask", "top_ids", "top", "tail")
    try:
        return [GuardBatch(*(tensors[f"{f}.{b}"] for f in fields)) for b in range(count)]
    except KeyError:
        return None


def write(path: Path, key: str, batches: list[GuardBatch]) -> None:
    """Write ``batches`` (moved to CPU) under ``key``, atomically, following the umask."""
    tensors = {}
    for b, batch in enumerate(batches):
        for name, value in zip(
            ("input_ids", "attention_mask", "top_ids", "top", "tail"),
            (batch.input_ids, batch.attention_mask, batch.ids, batch.top, batch.tail),
        ):
            tensors[f"{name}.{b}"] = value.detach().cpu().contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(path, save(tensors, metadata={"key": key, "format": "lorakit-drift-guard-1"}))
