"""Checkpoints: everything needed to continue a run exactly where it stopped.

``checkpoints/step-000050/`` holds ``adapter/`` (PEFT layout, usable as is) and ``trainer_state.pt``: the
optimizer state, the step (which fixes the schedule and the data position), RNG states of every process, the
best eval loss so far, the early-stopping counter and the resolved config. Each checkpoint directory is
written in a staging directory and renamed, so a kill at any moment leaves only complete checkpoints.
``trainer_state.pt`` is our own file and is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lorakit.core.files import atomic
from lorakit.core.errors import ConfigError
from lorakit.core.files import restore_adapter, save_adapter

STATE_FILE = "trainer_state.pt"
_STEP_DIR = re.compile(r"^step-(\d+)$")
# config keys whose change makes a resumed run a different run
_MUST_MATCH = ("base", "lora", "data.format", "data.max_length", "data.train_on_prompt", "data.packing",
               "train.batch_size", "train.grad_accum", "train.seed", "train.lr", "train.schedule", "train.loraplus_ratio",
               "train.objective", "dpo", "drift_guard")


@dataclass
class TrainerState:
    """What a checkpoint restores besides the adapter and the optimizer."""

    step: int = 0
    best_eval: float | None = None
    best_step: int | None = None
    evals_without_gain: int = 0
    rng: list[dict[str, Any]] = field(default_factory=list)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:06d}"


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (staging directories start with '.' and are ignored)."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and (p / STATE_FILE).exists()]
    return [p for _, p in sorted(found)]


def save(directory: Path, model: nn.Module, adapter: str, optimizer: torch.optim.Optimizer, state: TrainerState,
         config: dict[str, Any], metadata: dict[str, Any]) -> Path:
    """Write one checkpoint atomically."""
    payload = {"optimizer": optimizer.state_dict(), "step": state.step, "best_eval": state.best_eval,
               "best_step": state.best_step, "evals_without_gain": state.evals_without_gain, "rng": state.rng,
               "config": json.dumps(config)}
    with atomic.directory(directory) as staging:
        save_adapter(model, staging / "adapter", adapter, metadata=metadata)
        torch.save(payload, staging / STATE_FILE)
        (staging / "state.json").write_text(json.dumps({"step": state.step, "best_eval": state.best_eval,
                                                        "best_step": state.best_step}, indent=2) + "\n")
    return directory


def load(directory: Path, model: nn.Module, adapter: str, optimizer: torch.optim.Optimizer,
         config: dict[str, Any]) -> TrainerState:
    """Restore adapter tensors and optimizer from ``directory``; return the trainer state to continue from."""
    path = directory / STATE_FILE
    if not path.exists():
        raise ConfigError(f"{directory}: not a checkpoint (no {STATE_FILE}); give a checkpoints/step-N directory or auto")
    payload = torch.load(path, weights_only=True, map_location="cpu")
    _check_same_run(json.loads(payload["config"]), config, directory)
    restore_adapter(model, directory / "adapter", adapter)
    optimizer.load_state_dict(payload["optimizer"])
    return TrainerState(payload["step"], payload["best_eval"], payload["best_step"], payload["evals_without_gain"],
                        payload["rng"])


def _check_same_run(saved: dict[str, Any], current: dict[str, Any], directory: Path) -> None:
    for key in _MUST_MATCH:
        before, now = _lookup(saved, key), _lookup(current, key)
        if before != now:
            raise ConfigError(f"{directory}: checkpoint was made with {key}={before!r}, the config now says {now!r}; "
                              "resume with the same config or start a new output directory")


def _lookup(config: dict[str, Any], dotted: str):
    node: Any = config
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def prune(root: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints."""
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def find_resume(output: Path, resume: str | Path | None) -> Path | None:
    """The checkpoint to resume from: ``auto`` is the newest under ``output/checkpoints`` (or none yet)."""
    if resume is None:
        return None
    if str(resume) == "auto":
        found = list_checkpoints(output / "checkpoints")
        return found[-1] if found else None
    path = Path(resume)
    if not path.is_dir():
        raise ConfigError(f"--resume {resume}: no such checkpoint directory; use auto or a checkpoints/step-N directory")
    return path
