"""Inline SVG bar charts for the HTML report: no scripts, no external files."""

from __future__ import annotations

import math
from collections.abc import Callable

from markupsafe import Markup, escape

PALETTE = ("#7a869a", "#2f6fdf", "#e07b39", "#3aa46f", "#b04fc0", "#c8a422", "#d1495b", "#2ab7ca")
_LABEL_W, _BAR_H, _GAP, _WIDTH = 230, 16, 10, 720


def colors(columns: list[str]) -> dict[str, str]:
    """A fixed colour per column (the base is grey)."""
    return {c: PALETTE[i % len(PALETTE)] for i, c in enumerate(columns)}


def bar_chart(
    groups: list[tuple[str, dict[str, float]]],
    columns: list[str],
    fmt: Callable[[float], str],
    *,
    lo: float | None = None,
    hi: float | None = None,
) -> Markup:
    """Horizontal grouped bars: one group per ``(label, {column: value})``, one bar per column, a zero line.

    The axis spans ``[lo, hi]`` (defaults: the data's range widened to include 0). Non-finite values are skipped.
    """
    values = [v for _, row in groups for v in row.values() if v is not None and math.isfinite(v)]
    lo = min([0.0, *values]) if lo is None else lo
    hi = max([0.0, *values]) if hi is None else hi
    span = (hi - lo) or 1.0
    plot_w = _WIDTH - _LABEL_W - 140  # room for the value text right of the longest bar
    x_of = lambda v: _LABEL_W + (v - lo) / span * plot_w  # noqa: E731
    palette = colors(columns)
    parts, y = [], 8
    for title, row in groups:
        parts.append(f'<text x="{_LABEL_W - 8}" y="{y + 12}" text-anchor="end" class="glabel">{escape(title)}</text>')
        for column in columns:
            value = row.get(column)
            if value is not None and math.isfinite(value):
                x0, x1 = sorted((x_of(0.0), x_of(value)))
                parts.append(
                    f'<rect x="{x0:.1f}" y="{y}" width="{max(x1 - x0, 1):.1f}" height="{_BAR_H - 3}" '
                    f'fill="{palette[column]}"><title>{escape(column)}: {escape(fmt(value))}</title></rect>'
                )
                parts.append(
                    f'<text x="{max(x1, x_of(0.0)) + 4:.1f}" y="{y + 11}" class="val">{escape(column)} '
                    f"{escape(fmt(value))}</text>"
                )
            y += _BAR_H
        y += _GAP
    zero = x_of(0.0)
    parts.append(f'<line x1="{zero:.1f}" y1="4" x2="{zero:.1f}" y2="{y - _GAP + 4}" class="axis"/>')
    return Markup(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{y}" viewBox="0 0 {_WIDTH} {y}" '
        f'role="img">{"".join(parts)}</svg>'
    )
