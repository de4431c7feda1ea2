"""Hooks into the training loop, so that variants and reporting plug in without touching it.

A :class:`Callback` may add a regulariser to the loss (``loss_term``), act before each optimizer step (e.g.
mask or re-rank adapter parameters) and observe steps, evaluations, checkpoints and the end of the run.
Reporting callbacks run on the main process only; loss terms and pre-step hooks run on every process.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lorakit.core.files import atomic

if TYPE_CHECKING:
    from lorakit.train.trainer import Trainer


class Callback:
    """Override any subset of these methods."""

    main_only = False
    """Run only on the main process (rank 0): true for anything that writes or prints."""

    def on_train_begin(self, trainer: "Trainer") -> None: ...

    def loss_term(self, trainer: "Trainer") -> torch.Tensor | None:
        """A scalar added to the loss of each optimizer step (once, not per micro-batch)."""
        return None

    def on_before_optimizer_step(self, trainer: "Trainer") -> None: ...

    def on_step_end(self, trainer: "Trainer", metrics: dict[str, Any]) -> None: ...

    def on_evaluate(self, trainer: "Trainer", metrics: dict[str, Any]) -> None: ...

    def on_save(self, trainer: "Trainer", directory: Path) -> None: ...

    def on_train_end(self, trainer: "Trainer", summary: dict[str, Any]) -> None: ...

    def on_abort(self, trainer: "Trainer", error: BaseException) -> None:
        """The run stopped early by an exception (interruption, divergence); release what the callback holds."""


class MetricsLog(Callback):
    """Append one JSON object per logged step and per evaluation to ``metrics.jsonl``.

    On resume, lines after the checkpoint's step are dropped first, so the file reads like one unbroken run.
    """

    main_only = True

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_begin(self, trainer: "Trainer") -> None:
        if self.path.exists():
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= trainer.state.step
            ]
            atomic.write_text(self.path, "".join(line + "\n" for line in kept))
        self.handle = open(self.path, "a", encoding="utf-8")

    def _write(self, record: dict[str, Any]) -> None:
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()

    def on_step_end(self, trainer: "Trainer", metrics: dict[str, Any]) -> None:
        if metrics["step"] % trainer.config.train.log_every == 0 or metrics["step"] == trainer.config.train.max_steps:
            self._write(metrics)

    def on_evaluate(self, trainer: "Trainer", metrics: dict[str, Any]) -> None:
        self._write(metrics)

    def on_train_end(self, trainer: "Trainer", summary: dict[str, Any]) -> None:
        self.handle.close()

    def on_abort(self, trainer: "Trainer", error: BaseException) -> None:
        self.handle.close()


_SHOWN = (
    ("task_loss", "task"),
    ("drift_kl", "drift"),
    ("batch_kl", "batch-kl"),
    ("reward_accuracy", "acc"),
    ("reward_margin", "margin"),
)
"""Objective terms shown on the progress line beside the loss, when the run logs them."""


class ProgressBar(Callback):
    """A live bar: step, loss, learning rate, tokens/s and ETA (rich) on a terminal; off a terminal (a log file,
    CI) one plain line per logged step (``train.log_every``) on stderr instead."""

    main_only = True

    def on_train_begin(self, trainer: "Trainer") -> None:
        self.plain = not sys.stderr.isatty()
        self.eval_info = ""
        if self.plain:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task(
            "train", total=trainer.config.train.max_steps, completed=trainer.state.step, info=""
        )

    def on_step_end(self, trainer: "Trainer", metrics: dict[str, Any]) -> None:
        extra = "".join(f"  {label} {metrics[key]:.4f}" for key, label in _SHOWN if key in metrics)
        info = (
            f"loss {metrics['loss']:.4f}{extra}  lr {metrics['lr']:.2e}  {metrics['tokens_per_s']:,.0f} tok/s"
            f"{self.eval_info}"
        )
        if self.plain:
            cfg = trainer.config.train
            if metrics["step"] % cfg.log_every == 0 or metrics["step"] == cfg.max_steps:
                print(f"train step {metrics['step']}/{cfg.max_steps}: {info}", file=sys.stderr, flush=True)
            return
        self.progress.update(self.task, completed=metrics["step"], info=info)

    def on_evaluate(self, trainer: "Trainer", metrics: dict[str, Any]) -> None:
        self.eval_info = f"  eval {metrics['eval_loss']:.4f}"

    def on_train_end(self, trainer: "Trainer", summary: dict[str, Any]) -> None:
        if not self.plain:
            self.progress.stop()

    def on_abort(self, trainer: "Trainer", error: BaseException) -> None:
        if not self.plain:
            self.progress.stop()


class MLflowTracker(Callback):
    """Log params, step metrics, evaluations and the final adapter to MLflow (``tracking.mlflow`` URI)."""

    main_only = True

    def __init__(self, uri: str, experiment: str, run_name: str) -> None:
        self.uri, self.experiment, self.run_name = uri, experiment, run_name

    def on_train_begin(self, trainer: "Trainer") -> None:
        import mlflow

        mlflow.set_tracking_uri(self.uri)
        mlflow.set_experiment(self.experiment)
        self.run = mlflow.start_run(run_name=self.run_name)
        flat = _flatten(trainer.config.resolved())
        mlflow.log_params({k: str(v)[:250] for k, v in flat.items()})

    def on_step_end(self, trainer: "Trainer", metrics: dict[str, Any]) -> None:
        import mlflow

        keys = ("loss", "lr", "grad_norm", "tokens_per_s", *(key for key, _ in _SHOWN if key in metrics))
        mlflow.log_metrics({k: float(metrics[k]) for k in keys}, step=metrics["step"])

    def on_evaluate(self, trainer: "Trainer", metrics: dict[str, Any]) -> None:
        import mlflow

        mlflow.log_metric("eval_loss", metrics["eval_loss"], step=metrics["step"])

    def on_train_end(self, trainer: "Trainer", summary: dict[str, Any]) -> None:
        import mlflow

        mlflow.log_metrics(
            {k: float(v) for k, v in summary["metrics"].items() if isinstance(v, (int, float)) and v is not None}
        )
        adapter_dir = trainer.output / "adapter"
        if adapter_dir.exists():
            mlflow.log_artifacts(str(adapter_dir), artifact_path="adapter")
        mlflow.end_run()

    def on_abort(self, trainer: "Trainer", error: BaseException) -> None:
        import mlflow

        mlflow.end_run(status="KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat
