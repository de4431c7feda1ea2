"""The training loop: AdamW over adapter parameters, accumulation, clipping, schedule, checkpoints, DDP.

One optimizer step with global batch ``G`` (``batch_size × grad_accum × processes`` examples) minimises
``L = (1/N) Σ_{labelled tokens t ∈ G} CE_t + Σ_callbacks loss_term`` where ``N`` counts the labelled tokens of
the whole global batch — known in advance from the labels — so the result does not depend on how ``G`` is split
into micro-batches or processes. Under DDP each process scales its partial sum by ``W/N`` because DDP averages
gradients over the ``W`` processes.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lorakit._version import __version__
from lorakit.core import bases
from lorakit.core.errors import TrainingError
from lorakit.core.files import atomic, save_adapter
from lorakit.data import EncodedData
from lorakit.train import checkpoint, distributed, precision
from lorakit.train.callbacks import Callback, MetricsLog, MLflowTracker, ProgressBar
from lorakit.train.config import RunConfig, load_config
from lorakit.train.drift_guard import DriftGuard, trainer_scale
from lorakit.train.objectives import batch_collator, build_objective, precompute_reference
from lorakit.train.optim import make_optimizer, param_groups
from lorakit.train.plot import plot_losses
from lorakit.train.prepare import describe, prepare_data
from lorakit.train.sampler import StepSampler
from lorakit.train.schedule import lr_factor, warmup_steps
from lorakit.train.variants import build_model


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) stopped the run after finishing a step and saving ``checkpoint``."""

    def __init__(self, step: int, checkpoint: Path) -> None:
        super().__init__(f"interrupted after step {step}; saved {checkpoint}")
        self.step, self.checkpoint = step, checkpoint


class Trainer:
    """Trains adapter ``adapter`` of ``model`` on ``train_data`` as ``config`` says; writes into ``config.output``."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        config: RunConfig | dict | str,
        train_data: EncodedData,
        eval_data: EncodedData | None = None,
        *,
        adapter: str = "default",
        callbacks: list[Callback] = (),
        progress: bool = True,
    ) -> None:
        self.dist = distributed.setup()
        self.config = load_config(config).with_steps(len(train_data), self.dist.world)
        self.model, self.tokenizer, self.adapter = model, tokenizer, adapter
        self.train_data, self.eval_data = train_data, eval_data
        self.device = next(model.parameters()).device
        self.output = Path(self.config.output)
        self.precision = precision.resolve(self.config.train.precision, self.device.type)
        frozen_dtype = precision.compute_dtype(self.precision)
        if frozen_dtype is not None:
            cast = precision.store_frozen(model, frozen_dtype)
            if cast and progress and self.dist.main:
                print(
                    f"precision {self.precision}: {cast / 1e6:.1f}M frozen linear weights stored in {self.precision} "
                    "once (no per-step cast); adapters and optimizer state stay fp32",
                    file=sys.stderr,
                )
        cfg = self.config.train
        self.sampler = StepSampler(len(train_data), cfg.batch_size, cfg.grad_accum, self.dist.world, cfg.seed)
        self.warmup = warmup_steps(cfg.max_steps, cfg.warmup_ratio)
        self.groups = param_groups(model, adapter, cfg.lr, cfg.weight_decay, cfg.loraplus_ratio)
        self.params = [p for g in self.groups for p in g["params"]]
        self.optimizer = make_optimizer(self.groups, cfg.optim)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
        self.state = checkpoint.TrainerState()
        defaults: list[Callback] = [MetricsLog(self.output / "metrics.jsonl")]
        if progress:
            defaults.append(ProgressBar())
        if self.config.tracking.mlflow:
            tracking = self.config.tracking
            defaults.append(MLflowTracker(tracking.mlflow, tracking.experiment, tracking.run_name or self.output.name))
        guard = self.config.drift_guard
        if guard is not None and guard.weight > 0:
            defaults.insert(0, DriftGuard(guard))
        self.callbacks = [cb for cb in [*defaults, *callbacks] if self.dist.main or not cb.main_only]
        self.collate = batch_collator(self.config)
        self._stop_signal: int | None = None

    @classmethod
    def from_config(
        cls,
        config: RunConfig | dict | str,
        overrides: list[str] | None = None,
        *,
        train_data: Any = None,
        eval_data: Any = None,
        callbacks: list[Callback] = (),
        progress: bool = True,
    ) -> "Trainer":
        """Read the data (data errors come before the slow model load), load the base, inject the adapter
        (seeded by ``train.seed``); ready to :meth:`fit`."""
        from transformers import AutoTokenizer

        cfg = load_config(config, overrides)
        info = distributed.setup()
        tokenizer = AutoTokenizer.from_pretrained(bases.resolve(cfg.base))
        train, evaluation = prepare_data(cfg, tokenizer, train_data, eval_data)
        cfg = cfg.with_steps(len(train), info.world)
        model, tokenizer, variant_callbacks = build_model(cfg, info.device)
        callbacks = [*callbacks, *variant_callbacks]
        if cfg.train.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return cls(model, tokenizer, cfg, train, evaluation, callbacks=callbacks, progress=progress)

    # -- the loop -------------------------------------------------------------------------------------
    def fit(self, resume: str | Path | None = None, *, overwrite: bool = False) -> dict[str, Any]:
        """Train to ``max_steps`` (or early stop); ``resume``: ``auto`` or a checkpoint directory. Returns the summary.

        A non-empty output directory is refused unless resuming or ``overwrite`` (see
        :func:`lorakit.train.checkpoint.start_run`, which also writes the resolved ``config.yaml`` there)."""
        cfg = self.config.train
        started = time.perf_counter()
        found = checkpoint.start_run(
            self.output,
            self.config.resolved(),
            resume,
            overwrite=overwrite,
            keep=cfg.keep_checkpoints,
            write=self.dist.main,
        )
        if found is not None:
            self.state = checkpoint.load(found, self.model, self.adapter, self.optimizer, self.config.resolved())
            checkpoint.set_rng_state(self.state.rng[self.dist.rank])
        else:
            torch.manual_seed(cfg.seed + 1 + self.dist.rank)
        loss_fn: nn.Module = build_objective(self.config, self.model)
        if self.config.train.objective == "dpo" and self.config.dpo.precompute_reference:
            for data in (self.train_data, self.eval_data):
                if data is not None:
                    precompute_reference(
                        loss_fn,
                        data.examples,
                        self.pad_id,
                        cfg.batch_size,
                        self.device,
                        lambda: precision.autocast(self.precision, self.device.type),
                    )
        if self.dist.world > 1:
            loss_fn = nn.parallel.DistributedDataParallel(loss_fn, broadcast_buffers=False)
        self.loss_fn = loss_fn
        if self.dist.main:
            self.output.mkdir(parents=True, exist_ok=True)
        for cb in self.callbacks:
            cb.on_train_begin(self)
        last_metrics: dict[str, Any] = {}
        completed = True
        self.model.train()
        try:
            with self._signals():
                while self.state.step < cfg.max_steps:
                    last_metrics = self._step()
                    step = self.state.step
                    if self.eval_data is not None and cfg.eval_every and step % cfg.eval_every == 0:
                        self._evaluate()
                    if cfg.save_every and step % cfg.save_every == 0:
                        self._save_checkpoint()
                    if self._should_stop():
                        raise TrainingInterrupted(step, self._save_checkpoint())
                    if cfg.early_stopping_patience and self.state.evals_without_gain >= cfg.early_stopping_patience:
                        completed = False
                        break
        except BaseException as err:
            for cb in self.callbacks:
                cb.on_abort(self, err)
            raise
        finally:
            self.model.eval()
        return self._finish(last_metrics, completed, time.perf_counter() - started)

    def _step(self) -> dict[str, Any]:
        cfg = self.config.train
        step = self.state.step
        begin = time.perf_counter()
        factor = lr_factor(step, cfg.max_steps, self.warmup, cfg.schedule)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        indices = self.sampler.step_indices(step)
        n_targets = sum(self.train_data.examples[i].target_count for i in indices)
        micro = self.sampler.micro_batches(indices, self.dist.rank)
        loss_sum, tokens, stats = 0.0, 0, {}
        guard_scale = 1.0 if self.config.drift_guard is None else trainer_scale(self.config.drift_guard, self)
        if hasattr(self.objective, "scale"):
            self.objective.scale = guard_scale
        for m, rows in enumerate(micro):
            batch = self.collate([self.train_data.examples[i] for i in rows], self.pad_id)
            batch = {k: v.to(self.device) for k, v in batch.items()}
            tokens += int(batch["attention_mask"].sum())
            sync = m == len(micro) - 1
            no_sync = self.loss_fn.no_sync() if self.dist.world > 1 and not sync else contextlib.nullcontext()
            with no_sync:
                with precision.autocast(self.precision, self.device.type):
                    partial, parts = self.loss_fn(**batch)
                loss = partial * (self.dist.world / max(n_targets, 1))
                if sync:
                    for cb in self.callbacks:
                        with precision.autocast(self.precision, self.device.type):
                            term = cb.loss_term(self)
                        if term is not None:
                            loss = loss + term
                loss.backward()
            loss_sum += float(partial.detach())
            for key, value in parts.items():
                stats[key] = stats.get(key, 0.0) + float(value)
        named = [cb for cb in self.callbacks if getattr(cb, "term_name", None)]
        totals = distributed.all_sum(
            [loss_sum, float(tokens), *stats.values(), *(cb.term_value for cb in named)], self.dist
        )
        loss_sum, tokens = totals[0], totals[1]
        stats = {k: v / max(n_targets, 1) for k, v in zip(stats, totals[2 : 2 + len(stats)])}
        stats.update({cb.term_name: v for cb, v in zip(named, totals[2 + len(stats) :])})
        mean_loss = loss_sum / max(n_targets, 1)
        if not math.isfinite(mean_loss):
            self._diverged(step + 1, f"the loss is {mean_loss}")
        for cb in self.callbacks:
            cb.on_before_optimizer_step(self)
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm is not None else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, max_norm))
        if not math.isfinite(grad_norm):
            self._diverged(step + 1, f"the gradient norm is {grad_norm}")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step = step + 1
        seconds = time.perf_counter() - begin
        metrics = {
            "step": step + 1,
            "epoch": round(self.sampler.epoch_of(step + 1), 4),
            "loss": mean_loss,
            "lr": cfg.lr * factor,
            "grad_norm": grad_norm,
            "tokens": int(tokens),
            "tokens_per_s": tokens / seconds if seconds > 0 else 0.0,
            "step_s": seconds,
        }
        metrics.update({k: v for k, v in stats.items() if not (k == "task_loss" and v == mean_loss)})
        for cb in self.callbacks:
            cb.on_step_end(self, metrics)
        return metrics

    def _diverged(self, step: int, what: str) -> None:
        saved = checkpoint.list_checkpoints(self.output / "checkpoints")
        last = f"the last good checkpoint is {saved[-1]}" if saved else "no checkpoint was written yet"
        raise TrainingError(
            f"step {step}: {what}; training stopped and {last}. Lower train.lr or set "
            "train.max_grad_norm, then resume with --resume <checkpoint>"
        )

    # -- evaluation ------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean cross-entropy per labelled token over the eval data (each process takes a shard)."""
        if self.eval_data is None:
            raise TrainingError("no evaluation data: set data.eval or data.eval_fraction")
        was_training = self.model.training
        self.model.eval()
        examples = self.eval_data.examples[self.dist.rank :: self.dist.world]
        size = self.config.train.batch_size
        stats: dict[str, float] = {}
        count = 0.0
        for start in range(0, len(examples), size):
            chunk = examples[start : start + size]
            batch = {k: v.to(self.device) for k, v in self.collate(chunk, self.pad_id).items()}
            with precision.autocast(self.precision, self.device.type):
                _, parts = self.objective(**batch)
            for key, value in parts.items():
                stats[key] = stats.get(key, 0.0) + float(value)
            count += sum(e.target_count for e in chunk)
        keys = sorted(stats)
        totals = distributed.all_sum([count, *(stats[k] for k in keys)], self.dist)
        self.eval_stats = {k: v / max(totals[0], 1.0) for k, v in zip(keys, totals[1:])}
        self.model.train(was_training)
        return self.eval_stats["task_loss"]

    def _evaluate(self) -> dict[str, Any]:
        value = self.evaluate()
        step = self.state.step
        if self.state.best_eval is None or value < self.state.best_eval:
            self.state.best_eval, self.state.best_step, self.state.evals_without_gain = value, step, 0
            if self.dist.main:
                save_adapter(  # the best so far replaces the previous best of this run
                    self.model,
                    self.output / "best",
                    self.adapter,
                    metadata={"step": step, "eval_loss": value},
                    overwrite=True,
                )
        else:
            self.state.evals_without_gain += 1
        metrics = {"step": step, "eval_loss": value}
        metrics.update({f"eval_{k}": v for k, v in self.eval_stats.items() if k not in ("task_loss", "batch_kl")})
        for cb in self.callbacks:
            cb.on_evaluate(self, metrics)
        return metrics

    # -- checkpoints, signals, the end -------------------------------------------------------------------
    def _save_checkpoint(self) -> Path:
        self.state.rng = distributed.gather(checkpoint.rng_state(), self.dist)
        root = self.output / "checkpoints"
        directory = checkpoint.step_dir(root, self.state.step)
        if self.dist.main:
            checkpoint.save(
                directory,
                self.model,
                self.adapter,
                self.optimizer,
                self.state,
                self.config.resolved(),
                self._provenance(),
            )
            checkpoint.prune(root, self.config.train.keep_checkpoints)
            for cb in self.callbacks:
                cb.on_save(self, directory)
        distributed.barrier(self.dist)
        return directory

    @contextlib.contextmanager
    def _signals(self):
        """SIGINT/SIGTERM ask the loop to stop after the current step; a second Ctrl-C stops at once."""

        def request(signum, _frame):
            self._stop_signal = signum
            signal.signal(signum, previous[signum])

        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in previous:
            signal.signal(s, request)
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _should_stop(self) -> bool:
        flag = distributed.all_sum([1.0 if self._stop_signal is not None else 0.0], self.dist)[0]
        return flag > 0

    def _provenance(self) -> dict[str, Any]:
        return {
            "training": {
                "config": self.config.resolved(),
                "objective": self._objective_name(),
                "step": self.state.step,
                "precision": self.precision,
                "processes": self.dist.world,
                "dataset": {"train": describe(self.train_data), "eval": describe(self.eval_data)},
            }
        }

    def _objective_name(self) -> str:
        guard = self.config.drift_guard
        guarded = guard is not None and (guard.weight > 0 or guard.batch_weight > 0)
        return self.config.train.objective + ("+drift_guard" if guarded else "")

    @property
    def objective(self) -> nn.Module:
        """The objective module (unwrapped from DDP)."""
        return self.loss_fn.module if isinstance(self.loss_fn, nn.parallel.DistributedDataParallel) else self.loss_fn

    def _finish(self, last: dict[str, Any], completed: bool, seconds: float) -> dict[str, Any]:
        cfg = self.config.train
        step = self.state.step
        if self.eval_data is not None and (not cfg.eval_every or step % cfg.eval_every):
            self._evaluate()
        if not cfg.save_every or step % cfg.save_every:
            self._save_checkpoint()
        metrics = {
            "steps": step,
            "final_loss": last.get("loss"),
            "best_eval_loss": self.state.best_eval,
            "best_step": self.state.best_step,
        }
        summary = {
            "completed": completed,
            "metrics": metrics,
            "wall_seconds": round(seconds, 2),
            "output": str(self.output),
            "adapter": str(self.output / "adapter"),
        }
        if self.dist.main:
            provenance = self._provenance()
            provenance["training"].update(
                {"metrics": metrics, "wall_seconds": summary["wall_seconds"], "early_stopped": not completed}
            )
            save_adapter(  # fit checked the run directory at its start
                self.model, self.output / "adapter", self.adapter, metadata=provenance, overwrite=True
            )
            record = {
                "lorakit_version": __version__,
                "base": {"name_or_path": self.config.base, "fingerprint": bases.fingerprint(self.model)},
                **provenance["training"],
            }
            atomic.write_text(self.output / "lorakit.json", json.dumps(record, indent=2, default=str) + "\n")
        for cb in self.callbacks:
            cb.on_train_end(self, summary)
        if self.dist.main:
            png = plot_losses(self.output / "metrics.jsonl", self.output / "loss.png")
            summary["loss_png"] = str(png) if png else None
        distributed.barrier(self.dist)
        return summary
