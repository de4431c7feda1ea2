"""Sweeps: choose rank, alpha, targets, learning rate (any training-config key) against an evaluation.

``run_sweep("sweep.yaml")`` runs trials (train + evaluate + register) in an Optuna study kept in a database
until the budget is spent, then writes ``results.csv``, ``pareto.png`` and ``report.html`` to the sweep's
output directory and promotes the best trial (or the Pareto set) in the registry. Several processes, on one
machine (SQLite) or many (PostgreSQL), run ``run_sweep(..., mode="worker")`` on the same study and share its
trials. See :mod:`lorakit.sweep.spec` for the file, :mod:`lorakit.sweep.study` for how workers cooperate.

The package is callable: ``lk.sweep("sweep.yaml", ["budget.trials=4"])`` is ``run_sweep(...)``.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["run_sweep", "load_sweep", "write_results"]


def load_sweep(source, overrides: list[str] = ()):
    """Read and validate a sweep file (see :func:`lorakit.sweep.spec.load_sweep`)."""
    from lorakit.sweep.spec import load_sweep as load

    return load(source, overrides)


def run_sweep(
    source: str | Path | dict[str, Any] | Any,
    overrides: list[str] = (),
    *,
    mode: str = "new",
    on_trial: Callable[[Any, Any], None] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Run (``mode="new"``), continue (``"resume"``) or join (``"worker"``) the sweep ``source`` describes
    (a YAML path, a dict, or a :class:`~lorakit.sweep.spec.SweepSpec` from :func:`load_sweep`).

    ``overrides``: ``key=value`` strings applied to the sweep file (``config.train.max_steps=4``,
    ``budget.trials=2``). ``on_trial(study, frozen_trial)`` is called after each trial this process ran;
    ``progress`` shows the trainer's bar in each trial. Returns :func:`write_results`' summary.

    Raises :class:`~lorakit.core.errors.ConfigError` for a bad sweep file or search space (naming the key) and
    for a storage that cannot be opened; re-raises Ctrl-C after queueing the interrupted trial again.
    """
    from lorakit.sweep.spec import SweepSpec
    from lorakit.sweep.spec import load_sweep as load
    from lorakit.sweep.study import open_study, work
    from lorakit.sweep.trial import run_trial

    if mode not in ("new", "resume", "worker"):
        raise ValueError(f"mode must be new, resume or worker, got {mode!r}")
    spec = source if isinstance(source, SweepSpec) else load(source, overrides)
    study, storage = open_study(spec, mode=mode)
    work(
        spec,
        study,
        storage,
        lambda trial: run_trial(spec, trial, progress=progress),
        on_trial=on_trial or (lambda s, t: None),
    )
    return write_results(spec, study)


def write_results(spec, study) -> dict[str, Any]:
    """Write ``results.csv``, ``pareto.png`` and ``report.html`` and promote the best trial(s).

    Returns ``{"rows", "best" (trial numbers), "promoted" (registry refs), "csv", "png", "html", "summary"}``.
    """
    from lorakit.sweep.chart import pareto_png, report_html
    from lorakit.sweep.results import best_trials, progress_line, promote, trial_rows, write_csv

    spec.output.mkdir(parents=True, exist_ok=True)
    rows = trial_rows(spec, study)
    best = best_trials(study)
    numbers = [t.number for t in best]
    csv_path = spec.output / "results.csv"
    write_csv(rows, csv_path)
    png = pareto_png(spec, rows, numbers, spec.output / "pareto.png")
    summary = progress_line(study, spec)
    html = report_html(spec, rows, numbers, png, summary, spec.output / "report.html")
    promoted = promote(spec, best)
    return {
        "rows": rows,
        "best": numbers,
        "promoted": promoted,
        "csv": csv_path,
        "png": png,
        "html": html,
        "summary": summary,
        "spec": spec,
    }


class _CallableSweep(types.ModuleType):
    """This package's module type: calling it runs :func:`run_sweep` (so ``lk.sweep(...)`` works)."""

    def __call__(self, source, overrides: list[str] = (), **options: Any) -> dict[str, Any]:
        return run_sweep(source, overrides, **options)


sys.modules[__name__].__class__ = _CallableSweep
