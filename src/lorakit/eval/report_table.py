"""The terminal view of a report: adapters as columns, metrics as rows, the base first, the best value in bold."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from lorakit.eval.report import EvalReport
from lorakit.eval.report_format import best_columns, format_value, label


def _table(report: EvalReport, title: str, rows: dict[str, dict[str, float]]) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    for column in report.columns:
        table.add_column(column, justify="right")
    for metric, values in rows.items():
        best = best_columns(metric, values)
        table.add_row(
            label(metric),
            *[
                f"[bold]{format_value(metric, values.get(c))}[/bold]"
                if c in best
                else format_value(metric, values.get(c))
                for c in report.columns
            ],
        )
    return table


def print_report(report: EvalReport, console: Console | None = None) -> None:
    """Print the task and regression tables, the gate's verdict and where the files went."""
    console = console or Console()
    console.print(_table(report, f"Task metrics — {report.data}", report.metrics))
    if report.regression:
        console.print(_table(report, "Regression against the base (general sets)", report.regression))
    if report.thresholds:
        verdict = "[green]drift gate passed[/green]" if report.passed else "[red bold]drift gate FAILED[/red bold]"
        console.print(verdict)
        for failure in report.failures:
            console.print(f"  {failure}", markup=False)
    for kind, path in report.files.items():
        console.print(f"{kind}: {path}", markup=False)
