"""``report.html``: one self-contained page (inline CSS and SVG) with the tables, charts and side-by-side samples."""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING

from jinja2 import Environment
from markupsafe import Markup, escape

from lorakit.eval.charts import bar_chart, colors
from lorakit.eval.metrics import normalize
from lorakit.eval.report_format import BASE, best_columns, format_value, label

if TYPE_CHECKING:
    from lorakit.eval.report import EvalReport

_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>lorakit evaluation — {{ r.base.name }}</title>
<style>
body{font:14px/1.45 "DejaVu Sans",Helvetica,Arial,sans-serif;\
margin:24px auto;max-width:1180px;color:#1d2330;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}\
 h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dde2ea;padding-bottom:4px}
.meta{color:#5b6577;font-size:13px} table{border-collapse:collapse;margin:6px 0}
th,td{border:1px solid #dde2ea;padding:5px 10px;text-align:right;vertical-align:top}
th:first-child,td:first-child{text-align:left} thead th{background:#f3f5f9} td.best{font-weight:700;background:#eef6ee}
.gate{padding:8px 12px;border-radius:6px;margin:10px 0;font-weight:600}
.pass{background:#e6f4ea;color:#1e6b34} .fail{background:#fde8e8;color:#9b1c1c}
svg .glabel{font-size:12px;fill:#1d2330} svg .val{font-size:11px;fill:#3c4558}\
 svg .axis{stroke:#8a93a5;stroke-width:1}
table.samples th,table.samples td{text-align:left;white-space:pre-wrap;overflow-wrap:anywhere;\
font-family:"DejaVu Sans Mono",monospace;font-size:12px;max-width:320px}
mark.diff{background:#ffe08a;padding:0 1px} .ok{color:#1e6b34;font-weight:700;font-family:sans-serif}
.key span{display:inline-block;margin-right:14px}\
 .key i{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:-1px}
</style></head><body>
<h1>lorakit evaluation</h1>
<div class="meta">base <b>{{ r.base.name }}</b> (fingerprint {{ r.base.fingerprint[:12] }}) · data {{ r.data }}
 · {{ r.task.generation_rows }} generation rows, {{ r.task.choice_rows }} multiple-choice rows\
 · {{ "%.1f"|format(r.seconds) }} s
 · lorakit {{ r.lorakit_version }}</div>
<p class="key">{% for c in r.columns %}<span><i style="background:{{ palette[c] }}"></i>{{ c }}{% if c in r.adapters %}
 <small>({{ r.adapters[c] }})</small>{% endif %}</span>{% endfor %}</p>
{% if r.thresholds %}\
<div class="gate {{ 'pass' if r.passed else 'fail' }}">drift gate {{ 'passed' if r.passed else 'FAILED' }}
 (thresholds {% for k, v in r.thresholds.items() if v is not none %}\
{{ k }} ≤ {{ v }}{{ ", " if not loop.last }}{% endfor %})
 {% for f in r.failures %}<br>{{ f }}{% endfor %}</div>{% endif %}
<h2>Task metrics</h2>{{ table(r.metrics) }}
{% if task_chart %}{{ task_chart }}{% endif %}
{% if r.regression %}<h2>Regression against the base</h2>{{ table(r.regression) }}\
{% for chart in regression_charts %}{{ chart }}{% endfor %}{% endif %}
{% if rows %}<h2>Samples: base and adapters side by side</h2>
<p class="meta">Words of an adapter's output that differ from the base's output\
 are <mark class="diff">highlighted</mark>;
 ✓ marks an output equal to the reference after normalisation.</p>
<table class="samples"><thead><tr><th>input</th><th>reference</th>\
{% for c in r.columns %}<th>{{ c }}</th>{% endfor %}</tr></thead>
<tbody>{% for s in rows %}<tr><td>{{ s.prompt }}<br><small>{{ s.where }}</small></td><td>{{ s.reference }}</td>
{% for c in r.columns %}<td>{{ s.cells[c] }}</td>{% endfor %}</tr>{% endfor %}</tbody></table>{% endif %}
</body></html>
"""


def _table(report: EvalReport, rows: dict[str, dict[str, float]]) -> Markup:
    head = "".join(f"<th>{escape(c)}</th>" for c in report.columns)
    body = []
    for metric, values in rows.items():
        best = best_columns(metric, values)
        cells = "".join(
            f"<td{' class=best' if c in best else ''}>{escape(format_value(metric, values.get(c)))}</td>"
            for c in report.columns
        )
        body.append(f"<tr><td>{escape(label(metric))}</td>{cells}</tr>")
    return Markup(f"<table><thead><tr><th>metric</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")


def highlight(base: str, other: str) -> Markup:
    """``other`` with the words that differ from ``base`` wrapped in ``<mark class="diff">`` (word-level diff)."""
    a, b = base.split(" "), other.split(" ")
    out = []
    for op, _, _, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if j1 == j2:
            continue
        text = escape(" ".join(b[j1:j2]))
        out.append(text if op == "equal" else Markup(f'<mark class="diff">{text}</mark>'))
    return Markup(" ").join(out)


def _cells(report: EvalReport, sample: dict) -> dict[str, Markup]:
    base_text = sample["outputs"].get(BASE, "")
    cells = {}
    for column in report.columns:
        text = sample["outputs"].get(column, "")
        body = escape(text) if column == BASE else highlight(base_text, text)
        right = sample["reference"] is not None and normalize(text) == normalize(sample["reference"])
        cells[column] = Markup(f"{body}{Markup(' <span class=ok>✓</span>') if right else ''}")
    return cells


def render_html(report: EvalReport) -> str:
    """The whole report page as one string."""
    fractions = [
        (label(m), v) for m, v in report.metrics.items() if m not in ("reference_loss", "reference_perplexity")
    ]
    regression = report.regression or {}
    regression_charts = [
        bar_chart([(label(metric), regression[metric])], report.columns, fmt)
        for metric, fmt in (
            ("kl", lambda v: f"{v:.3g}"),
            ("perplexity_change", lambda v: f"{100 * v:+.2f}%"),
            ("mc_accuracy_change", lambda v: f"{v:+.3f}"),
        )
        if metric in regression
    ]
    env = Environment(autoescape=True)
    page = env.from_string(_TEMPLATE)
    return page.render(
        r=report,
        palette=colors(report.columns),
        table=lambda rows: _table(report, rows),
        task_chart=bar_chart(fractions, report.columns, lambda v: f"{v:.3f}", lo=0.0, hi=1.0) if fractions else None,
        regression_charts=regression_charts,
        rows=[{**s, "cells": _cells(report, s)} for s in report.samples],
    )
