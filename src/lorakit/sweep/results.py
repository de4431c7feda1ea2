"""What a sweep found: one row per trial, ``results.csv``, the best trial (or Pareto set), promotion, the table.

Columns: ``trial``, ``state`` (complete, pruned, fail, running, waiting), the searched config keys, the
objectives, then ``drift_kl``, ``adapter_mb``, ``eval_loss`` and the other scores, ``seconds`` (training wall
time), ``adapter`` (registry reference) and ``note`` (why it was pruned or failed, which trial it re-runs).
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from lorakit.core.files import atomic
from lorakit.sweep.spec import SweepSpec
from lorakit.sweep.study import retry_history

_LEAD = ("drift_kl", "adapter_mb", "eval_loss")


def trial_rows(spec: SweepSpec, study: optuna.Study) -> list[dict[str, Any]]:
    """One dict per trial, in trial order (see the module docstring for the columns)."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        scores = trial.user_attrs.get("scores", {})
        values = trial.user_attrs.get("config") or spec.space.values_of(trial.params)
        row: dict[str, Any] = {"trial": trial.number, "state": trial.state.name.lower()}
        row.update({p.key: _cell(values.get(p.key)) for p in spec.space.params})
        row.update({name: scores.get(name) for name in score_columns(spec, study)})
        row["seconds"] = trial.user_attrs.get("seconds")
        row["adapter"] = trial.user_attrs.get("adapter")
        row["note"] = _note(trial)
        rows.append(row)
    return rows


def score_columns(spec: SweepSpec, study: optuna.Study) -> list[str]:
    """Objectives first, then drift, size and eval loss, then every other score any trial measured."""
    seen = [k for t in study.get_trials(deepcopy=False) for k in t.user_attrs.get("scores", {})]
    ordered = [*spec.objectives, *_LEAD, *sorted(set(seen))]
    return list(dict.fromkeys(ordered))


def _cell(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def _note(trial: FrozenTrial) -> str:
    notes = []
    history = retry_history(trial)
    if history:
        notes.append(f"re-runs trial {history[-1]}")
    for key in ("pruned", "error"):
        if key in trial.user_attrs:
            notes.append(str(trial.user_attrs[key]))
    if trial.state == TrialState.FAIL and not notes:
        notes.append("its worker stopped (killed or lost); the trial was queued again")
    return "; ".join(notes)


def write_csv(rows: list[dict[str, Any]], path) -> None:
    """``results.csv``, atomically; floats as Python prints them (full precision)."""
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    atomic.write_text(path, buffer.getvalue())


def best_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The best complete trial (one objective) or the Pareto set (several), in trial order; empty if none finished."""
    if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        return []
    if len(study.directions) == 1:
        return [study.best_trial]
    return sorted(study.best_trials, key=lambda t: t.number)


def promote(spec: SweepSpec, trials: list[FrozenTrial]) -> list[str]:
    """Promote each trial's registered adapter to ``spec.promote`` (audited); returns the references promoted."""
    if spec.promote is None:
        return []
    from lorakit.registry import Registry

    refs = [t.user_attrs["adapter"] for t in trials if t.user_attrs.get("adapter")]
    with Registry(spec.registry) as registry:
        for ref in refs:
            registry.promote(ref, spec.promote)
    return refs


def progress_line(study: optuna.Study, spec: SweepSpec) -> str:
    """``4/8 done (1 pruned, 0 failed, 1 running) · best #2 json_exact_match=0.875`` for the live display."""
    trials = study.get_trials(deepcopy=False)
    count = {s: sum(1 for t in trials if t.state == s) for s in TrialState}
    finished = count[TrialState.COMPLETE] + count[TrialState.PRUNED]
    total = f"/{spec.trials}" if spec.trials is not None else ""
    line = (
        f"{finished}{total} done ({count[TrialState.PRUNED]} pruned, {count[TrialState.FAIL]} failed, "
        f"{count[TrialState.RUNNING]} running)"
    )
    best = best_trials(study)
    if best and len(spec.objectives) == 1:
        metric = next(iter(spec.objectives))
        line += f" · best #{best[0].number} {metric}={best[0].values[0]:.4g}"
    elif best:
        line += f" · Pareto set: {', '.join(f'#{t.number}' for t in best)}"
    return line


def rich_table(spec: SweepSpec, rows: list[dict[str, Any]], best: list[int]):
    """A :class:`rich.table.Table` of the rows (searched keys, objectives, drift, size, eval loss, seconds);
    best trials are marked with ★. ``results.csv`` has every column."""
    from rich.table import Table

    table = Table(title=f"sweep {spec.name}", show_lines=False)
    shown = {"trial", "state", *(p.key for p in spec.space.params), *spec.objectives, *_LEAD, "seconds"}
    columns = [c for c in (rows[0] if rows else {}) if c in shown]
    for column in columns:
        table.add_column(column, justify="right" if column not in ("state",) else "left")
    for row in rows:
        cells = [_show(row[c]) for c in columns]
        cells[0] = f"★ {cells[0]}" if row["trial"] in best else cells[0]
        table.add_row(*cells)
    return table


def _show(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
