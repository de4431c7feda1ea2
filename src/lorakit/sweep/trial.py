"""One trial: train with the trial's settings, evaluate (task metrics and drift), register, return the objectives.

Training is :class:`lorakit.train.Trainer` with one extra callback that reports each evaluation's loss to the
Optuna trial and stops the run (:class:`optuna.TrialPruned`) when the pruner says so. Evaluation runs lorakit
eval's code on the trained model in place: task metrics on the sweep's eval rows (``plan_task``,
``generate``, ``score_outputs``, ``score_likelihoods``) and drift, the mean KL(base ‖ adapted) over the drift
prompts (``drift_kl``, the base from the same model with adapters disabled). The adapter directory gets the
trial's lineage (sweep name, trial number, parameters) and scores in ``lorakit.json`` and is registered as
``NAME@trial-N``, tagged ``sweep-NAME``.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import optuna
import torch
from torch import nn

from lorakit.core.files import atomic
from lorakit.core.files.peft_format import WEIGHTS_FILE
from lorakit.core.files.read import META_FILE
from lorakit.core.model import adapter_parameters
from lorakit.eval.drift import drift_kl
from lorakit.eval.generate import generate
from lorakit.eval.regression import general_prompts
from lorakit.eval.task import plan_task, score_likelihoods, score_outputs
from lorakit.sweep.spec import SweepSpec
from lorakit.train import Callback, Trainer, precision

ADAPTER = "default"


class ReportToTrial(Callback):
    """Report each evaluation's loss to ``trial`` (step = optimizer step); prune when ``prune`` and the pruner says so.

    Raises :class:`optuna.TrialPruned` from ``on_evaluate``; the trainer then stops without writing ``adapter/``.
    """

    main_only = True

    def __init__(self, trial: optuna.Trial, prune: bool) -> None:
        self.trial, self.prune = trial, prune

    def on_evaluate(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        self.trial.set_user_attr("last_eval_loss", metrics["eval_loss"])
        if not self.prune:
            return
        self.trial.report(metrics["eval_loss"], metrics["step"])
        if self.trial.should_prune():
            raise optuna.TrialPruned(
                f"eval loss {metrics['eval_loss']:.4f} at step {metrics['step']} is worse than "
                "the median of earlier trials at that step"
            )


def trial_dir(spec: SweepSpec, number: int) -> Path:
    return spec.output / "trials" / f"{number:04d}"


def run_trial(spec: SweepSpec, trial: optuna.Trial, *, progress: bool = False) -> list[float]:
    """Train, evaluate and register one trial; returns the objective values in ``spec.objectives`` order.

    Every score is also stored on the trial (``user_attrs["scores"]``) together with the config values and the
    registry reference. Raises :class:`optuna.TrialPruned` when pruned; training and data errors propagate.
    """
    values = spec.space.suggest(trial)
    output = trial_dir(spec, trial.number)
    trial.set_user_attr("config", json.loads(json.dumps(values)))
    trial.set_user_attr("output", str(output))
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    config = spec.trial_config(values, output)
    prune = spec.pruner is not None and len(spec.objectives) == 1
    trainer = Trainer.from_config(config, callbacks=[ReportToTrial(trial, prune)], progress=progress)
    summary = trainer.fit(overwrite=True)  # a trial re-run after a kill starts over in its own directory
    scores = evaluate_trained(trainer.model, trainer.tokenizer, spec, trainer.precision)
    adapter_dir = Path(summary["adapter"])
    scores.update(
        {
            "eval_loss": summary["metrics"]["best_eval_loss"],
            "train_loss": summary["metrics"]["final_loss"],
            "adapter_mb": (adapter_dir / WEIGHTS_FILE).stat().st_size / 1e6,
            "adapter_params": float(sum(p.numel() for p in adapter_parameters(trainer.model, ADAPTER).values())),
        }
    )
    missing = [m for m in spec.objectives if scores.get(m) is None]
    if missing:
        raise optuna.TrialPruned(f"no {missing[0]} measured (eval_loss needs config.data.eval or data.eval_fraction)")
    trial.set_user_attr("scores", scores)
    trial.set_user_attr("seconds", summary["wall_seconds"])
    ref = register(spec, trial.number, values, scores, adapter_dir)
    trial.set_user_attr("adapter", ref)
    return [float(scores[m]) for m in spec.objectives]


@torch.no_grad()
def evaluate_trained(model: nn.Module, tokenizer, spec: SweepSpec, mode: str) -> dict[str, float]:
    """Task scores of the model's active adapter on ``spec.eval_rows`` plus ``drift_kl``;
    ``mode``: autocast precision.
    """
    plan = plan_task(spec.eval_rows, spec.task)
    task = spec.task
    with precision.autocast(mode, next(model.parameters()).device.type):
        scores: dict[str, float] = {}
        if plan.generates:
            outputs = generate(
                model,
                tokenizer,
                [r.prompt for r in plan.generation_rows],
                max_new_tokens=task.max_new_tokens,
                batch_size=task.batch_size,
                chat=plan.chat,
            )
            scores.update(score_outputs(plan, task, outputs))
        scores.update(score_likelihoods(plan, task, model, tokenizer))
    scores["drift_kl"] = drift_kl(model, tokenizer, general_prompts(spec.drift_prompts), batch_size=task.batch_size)
    return {k: float(v) for k, v in scores.items()}


def register(spec: SweepSpec, number: int, values: dict[str, Any], scores: dict[str, float], adapter_dir: Path) -> str:
    """Write the trial's lineage and scores into ``lorakit.json`` and register the adapter; returns ``name@trial-N``."""
    from lorakit.registry import Registry

    meta_path = adapter_dir / META_FILE
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta["sweep"] = {
        "name": spec.name,
        "trial": number,
        "params": values,
        "objectives": spec.objectives,
        "storage": _without_password(spec.storage),
    }
    meta["metrics"] = [{"name": k, "value": v, "split": "eval", "dataset": spec.eval_data} for k, v in scores.items()]
    meta["description"] = f"sweep {spec.name}, trial {number}: " + ", ".join(f"{k}={v}" for k, v in values.items())
    atomic.write_text(meta_path, json.dumps(meta, indent=2, default=str) + "\n")
    with Registry(spec.registry) as registry:
        record = registry.add(adapter_dir, name=spec.name, version=f"trial-{number}", tags=[f"sweep-{spec.name}"])
    return record.ref


def _without_password(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
