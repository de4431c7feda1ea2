"""The sweep's picture: task score against drift, point area proportional to adapter size, as PNG and HTML.

The task score is the first objective that is not drift or size (``eval_loss`` when there is none). The best
trial, or the Pareto set of a multi-objective sweep, is ringed and labelled with its trial number. The HTML
report is one self-contained file: the chart (PNG, base64), the results table and the sweep's settings.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

from lorakit.core.files import atomic
from lorakit.sweep.spec import SweepSpec

_NOT_TASK = ("drift_kl", "adapter_mb", "adapter_params")


def task_metric(spec: SweepSpec) -> str:
    return next((m for m in spec.objectives if m not in _NOT_TASK), "eval_loss")


def pareto_png(spec: SweepSpec, rows: list[dict[str, Any]], best: list[int], path: Path) -> Path | None:
    """Write the scatter of complete trials to ``path`` (atomically); ``None`` when no trial completed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = task_metric(spec)
    done = [r for r in rows if r["state"] == "complete" and r.get(metric) is not None and r.get("drift_kl") is not None]
    if not done:
        return None
    largest = max(r["adapter_mb"] or 0.0 for r in done) or 1.0
    sizes = [30 + 470 * (r["adapter_mb"] or 0.0) / largest for r in done]
    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=120)
    axes.scatter(
        [r["drift_kl"] for r in done],
        [r[metric] for r in done],
        s=sizes,
        alpha=0.55,
        color="#4C72B0",
        edgecolors="none",
        label="trial (area ∝ adapter MB)",
    )
    top = [r for r in done if r["trial"] in best]
    axes.scatter(
        [r["drift_kl"] for r in top],
        [r[metric] for r in top],
        s=[sizes[done.index(r)] for r in top],
        facecolors="none",
        edgecolors="#C44E52",
        linewidths=2,
        label="best trial" if len(spec.objectives) == 1 else "Pareto set",
    )
    for r in done:
        axes.annotate(
            f"#{r['trial']}", (r["drift_kl"], r[metric]), textcoords="offset points", xytext=(6, 4), fontsize=8
        )
    axes.set_xlabel("drift: KL(base ‖ adapted), general prompts (lower is better)")
    direction = spec.objectives.get(metric, "minimize")
    axes.set_ylabel(f"{metric} ({'higher' if direction == 'maximize' else 'lower'} is better)")
    axes.set_title(f"sweep {spec.name}: {len(done)} complete trials")
    axes.grid(alpha=0.3)
    axes.legend(loc="best", fontsize=8, markerscale=0.5)
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    atomic.write_bytes(path, buffer.getvalue())
    return path


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>sweep {{ name }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 13px; } td, th { padding: 3px 8px; border-bottom: 1px solid #ddd; }
td.n { text-align: right; font-variant-numeric: tabular-nums; } tr.best { background: #fff3cd; }
code { background: #f4f4f4; padding: 1px 4px; }
</style></head><body>
<h1>sweep {{ name }}</h1>
<p>{{ summary }}</p>
<p>Objectives: {% for m, d in objectives.items() %}<code>{{ m }}</code> ({{ d }})\
{% if not loop.last %}, {% endif %}{% endfor %}.
Sampler <code>{{ sampler }}</code>; eval rows <code>{{ eval_data }}</code>.
{% if best %}Highlighted: {{ best_label }}.{% endif %}</p>
{% if png %}<img alt="task score vs drift, point area = adapter size" src="data:image/png;base64,{{ png }}">{% endif %}
<h2>Trials</h2>
<table><tr>{% for c in columns %}<th>{{ c }}</th>{% endfor %}</tr>
{% for row in rows %}<tr{% if row.trial in best %} class="best"{% endif %}>\
{% for c in columns %}<td{% if row[c] is number %} class="n"{% endif %}>\
{{ show(row[c]) }}</td>{% endfor %}</tr>
{% endfor %}</table>
<h2>Search space</h2>
<pre>{{ space }}</pre>
</body></html>
"""


def report_html(
    spec: SweepSpec, rows: list[dict[str, Any]], best: list[int], png: Path | None, summary: str, path: Path
) -> Path:
    """Write the one-file HTML report to ``path`` (atomically)."""
    from jinja2 import Environment

    template = Environment(autoescape=True).from_string(_PAGE)
    space = {
        p.name: (
            list(p.choices)
            if p.kind in ("choice", "ratio")
            else {"low": p.low, "high": p.high, "log": p.log, "step": p.step}
        )
        for p in spec.space.params
    }
    html = template.render(
        name=spec.name,
        summary=summary,
        objectives=spec.objectives,
        sampler=spec.sampler,
        eval_data=spec.eval_data,
        best=best,
        best_label="the best trial" if len(spec.objectives) == 1 else "the Pareto set",
        png=base64.b64encode(png.read_bytes()).decode() if png else None,
        columns=list(rows[0]) if rows else [],
        rows=rows,
        space=json.dumps(space, indent=2),
        show=lambda v: "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v),
    )
    atomic.write_text(path, html)
    return path
