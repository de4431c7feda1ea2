"""Checkpoints: everything needed to continue a run exactly where it stopped.

``checkpoints/step-000050/`` holds ``adapter/`` (PEFT layout, usable as is) and ``trainer_state.pt``: the
optimizer state, the step (which fixes the schedule and the data position), RNG states of every process, the
best eval loss so far, the early-stopping counter and the resolved config. Each checkpoint directory is
written in a staging directory and renamed, so a kill at any moment leaves only complete checkpoints.
``trainer_state.pt`` is our own file and is read with ``torch.load(weights_only=True)``.

A run directory starts with :func:`start_run`: a directory that already holds something is refused unless the
run resumes or ``overwrite`` is given; staging directories left by a kill are removed and ``keep_checkpoints``
is enforced again; ``--resume auto`` refuses a finished run (its ``adapter/`` is written) and a run whose
recorded ``config.yaml`` differs in a key that changes the run; the resolved config (after ``--set``) is
written to ``config.yaml`` by :func:`~lorakit.core.files.strict_yaml.dump_yaml` (so it reads back through the
strict reader as the same values), and ``lorakit train --resume RUN_DIR`` continues exactly this run.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lorakit.core.errors import ConfigError, OutputExistsError
from lorakit.core.files import atomic, restore_adapter, save_adapter
from lorakit.core.files.strict_yaml import dump_yaml, read_yaml

STATE_FILE = "trainer_state.pt"
RUN_CONFIG = "config.yaml"
"""The resolved config of a run, in its run directory."""
FINAL_ADAPTER = "adapter"
_RUN_ARTIFACTS = ("checkpoints", "adapter", "best", "metrics.jsonl", "loss.png", RUN_CONFIG)
_LEFTOVER = re.compile(r"^\.step-\d+\.(staging|old)-")
_STEP_DIR = re.compile(r"^step-(\d+)$")
# config keys whose change makes a resumed run a different run
_MUST_MATCH = (
    "base",
    "lora",
    "data.format",
    "data.max_length",
    "data.train_on_prompt",
    "data.packing",
    "train.batch_size",
    "train.grad_accum",
    "train.seed",
    "train.lr",
    "train.schedule",
    "train.loraplus_ratio",
    "train.objective",
    "dpo",
    "drift_guard",
)


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
    found = [
        (int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and (p / STATE_FILE).exists()
    ]
    return [p for _, p in sorted(found)]


def save(
    directory: Path,
    model: nn.Module,
    adapter: str,
    optimizer: torch.optim.Optimizer,
    state: TrainerState,
    config: dict[str, Any],
    metadata: dict[str, Any],
) -> Path:
    """Write one checkpoint atomically."""
    payload = {
        "optimizer": optimizer.state_dict(),
        "step": state.step,
        "best_eval": state.best_eval,
        "best_step": state.best_step,
        "evals_without_gain": state.evals_without_gain,
        "rng": state.rng,
        "config": json.dumps(config),
    }
    with atomic.directory(directory) as staging:
        save_adapter(model, staging / "adapter", adapter, metadata=metadata)
        torch.save(payload, staging / STATE_FILE)
        (staging / "state.json").write_text(
            json.dumps({"step": state.step, "best_eval": state.best_eval, "best_step": state.best_step}, indent=2)
            + "\n"
        )
    return directory


def load(
    directory: Path, model: nn.Module, adapter: str, optimizer: torch.optim.Optimizer, config: dict[str, Any]
) -> TrainerState:
    """Restore adapter tensors and optimizer from ``directory``; return the trainer state to continue from."""
    path = directory / STATE_FILE
    if not path.exists():
        raise ConfigError(
            f"{directory}: not a checkpoint (no {STATE_FILE}); give a checkpoints/step-N directory or auto"
        )
    payload = torch.load(path, weights_only=True, map_location="cpu")
    _check_same_run(json.loads(payload["config"]), config, directory)
    restore_adapter(model, directory / "adapter", adapter)
    optimizer.load_state_dict(payload["optimizer"])
    return TrainerState(
        payload["step"], payload["best_eval"], payload["best_step"], payload["evals_without_gain"], payload["rng"]
    )


def _check_same_run(saved: dict[str, Any], current: dict[str, Any], directory: Path) -> None:
    for key in _MUST_MATCH:
        before, now = _lookup(saved, key), _lookup(current, key)
        if before != now:
            raise ConfigError(
                f"{directory}: the run was made with {key}={before!r}, the config now says {now!r}; "
                "resume with the same config or start a new output directory"
            )


def _lookup(config: dict[str, Any], dotted: str):
    node: Any = config
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def prune(root: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints."""
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def remove_partial(root: Path) -> list[Path]:
    """Delete the half-written checkpoints a kill left under ``root``: staging directories, retired copies, and
    ``step-N`` directories without a trainer state. Returns what was removed."""
    if not root.is_dir():
        return []
    partial = [
        p
        for p in root.iterdir()
        if p.is_dir() and (_LEFTOVER.match(p.name) or (_STEP_DIR.match(p.name) and not (p / STATE_FILE).exists()))
    ]
    for path in partial:
        shutil.rmtree(path, ignore_errors=True)
    return partial


def check_run_dir(output: Path, resume: str | Path | None, overwrite: bool = False) -> None:
    """Refuse, before anything loads, a start that would mix two runs in ``output``.

    Raises:
        OutputExistsError: ``output`` holds files and neither ``resume`` nor ``overwrite`` is given.
        ConfigError: ``resume`` is ``auto`` and the run there already finished (``adapter/`` written), or the
            run's recorded ``config.yaml`` is not strict YAML (``file:line``, e.g. a key given twice by hand).

    Only the first process checks (torchrun's ``RANK`` 0): the others could already see what it wrote; if it
    refuses, torchrun stops them.
    """
    if os.environ.get("RANK", "0") != "0":
        return
    output = Path(output)
    if resume is None and not overwrite and output.is_dir() and any(output.iterdir()):
        held = ", ".join(sorted(p.name for p in output.iterdir())[:4])
        raise OutputExistsError(
            f"{output}: the run directory is not empty (it holds {held}); continue it with "
            f"--resume auto, start over with --overwrite (Python: overwrite=True), or set another output"
        )
    if str(resume) == "auto" and (output / FINAL_ADAPTER / "adapter_config.json").exists() and not overwrite:
        raise ConfigError(
            f"{output}: this run already finished ({output / FINAL_ADAPTER} is written), so there is "
            "nothing to resume; train into another output, or pass --overwrite to start it over"
        )
    if resume is not None and (output / RUN_CONFIG).is_file():
        read_yaml(output / RUN_CONFIG, "recorded run config")  # a damaged record is refused before the model loads


def start_run(
    output: Path,
    config: dict[str, Any],
    resume: str | Path | None,
    *,
    overwrite: bool = False,
    keep: int = 3,
    write: bool = True,
) -> Path | None:
    """Prepare ``output`` for a run with the resolved ``config`` and return the checkpoint to resume from.

    ``write`` is false on processes other than the first: they only find the checkpoint (the first process
    checks and prepares the directory; checking there too would race with its writes).
    """
    output = Path(output)
    if not write:
        return find_resume(output, resume)
    check_run_dir(output, resume, overwrite)
    if resume is not None and (output / RUN_CONFIG).is_file():
        recorded = read_yaml(output / RUN_CONFIG, "recorded run config")
        _check_same_run(recorded, config, output / RUN_CONFIG)
    if overwrite and resume is None:
        for name in _RUN_ARTIFACTS:
            target = output / name
            shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
    remove_partial(output / "checkpoints")
    prune(output / "checkpoints", keep)
    atomic.write_text(output / RUN_CONFIG, dump_yaml(config))
    return find_resume(output, resume)


def find_resume(output: Path, resume: str | Path | None) -> Path | None:
    """The checkpoint to resume from: ``auto`` is the newest under ``output/checkpoints`` (or none yet)."""
    if resume is None:
        return None
    if str(resume) == "auto":
        found = list_checkpoints(output / "checkpoints")
        return found[-1] if found else None
    path = Path(resume)
    if not path.is_dir():
        raise ConfigError(
            f"--resume {resume}: no such checkpoint directory; use auto or a checkpoints/step-N directory"
        )
    return path
