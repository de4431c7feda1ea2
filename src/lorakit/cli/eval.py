"""``lorakit eval``: the base and adapters side by side on your data and the general sets; report and drift gate."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from lorakit.cli.options import dtype_name
from lorakit.cli.progress import phase
from lorakit.core.errors import ConfigError

app = typer.Typer()  # mounted by lorakit.cli.app


def parse_adapter(text: str) -> tuple[str, str]:
    """``NAME=DIR`` (or ``NAME=registry:ref``), or a bare ``DIR`` named after its last path component."""
    name, sep, source = text.partition("=")
    if not sep:
        source = text
        name = re.sub(r"[^A-Za-z0-9_-]", "_", Path(text.rstrip("/")).name or "adapter")
    if not name or not source:
        raise ConfigError(f"--adapter {text!r}: give NAME=DIR, e.g. --adapter triage=runs/quickstart/adapter")
    return name, source


@app.command("eval")
def eval_command(
    base: str = typer.Option(
        "smollm2-135m-instruct", "--base", help="Base model: the default's name or a local directory."
    ),
    adapter: list[str] = typer.Option(
        [], "--adapter", help="NAME=DIR (or NAME=registry:name@version); repeat to compare."
    ),
    data: Path = typer.Option(
        ..., "--data", help="Evaluation rows: JSONL/CSV/Parquet (prompt or messages, reference)."
    ),
    task: Path = typer.Option(
        None, "--task", help="Task spec YAML (metrics, fields, schema, regex, max_new_tokens, …)."
    ),
    regression: str = typer.Option(
        "default",
        "--regression",
        help="'default' (shipped sets), 'none', or a YAML naming your prompts/text/choices files.",
    ),
    max_drift: str = typer.Option(
        None, "--max-drift", help="Gate: KL threshold, or kl=…,ppl=…,mc=… ; exit 1 when an adapter exceeds one."
    ),
    out: Path = typer.Option(Path("runs/eval"), "--out", help="Directory for report.json and report.html."),
    dtype: str = typer.Option("fp32", "--dtype", help="Compute dtype of the base: fp32 (float32) or bf16 (bfloat16)."),
    as_json: bool = typer.Option(False, "--json", help="Print report.json to stdout instead of the tables."),
) -> None:
    """Evaluate the base and each adapter: task metrics, regression against the base, report files, drift gate."""
    import torch

    from lorakit.eval.report_table import print_report
    from lorakit.eval.runner import evaluate

    dtype = dtype_name(dtype, ("float32", "bfloat16"))
    adapters = dict(parse_adapter(a) for a in adapter)
    if len(adapters) != len(adapter):
        raise ConfigError("two --adapter options have the same NAME; give each adapter its own name")
    with phase("evaluation") as running:
        report = evaluate(
            base,
            adapters,
            data,
            task=task,
            regression=regression,
            max_drift=max_drift,
            dtype=getattr(torch, dtype),
            log=lambda line: typer.echo(line, err=True),
        )
        running.values = {"adapters": len(adapters), "gate": "passed" if report.passed else "failed"}
    report.write(out)
    _record_in_registry(report)
    if as_json:
        typer.echo(report.to_json())
    else:
        print_report(report)
    if not report.passed:
        raise SystemExit(1)  # the gate: exit 1, distinct from bad input (2)


def _record_in_registry(report) -> None:
    """Append each registry-sourced adapter's finite metrics (task and regression) to its registry entry."""
    import math

    refs = {
        name: source[len("registry:") :]
        for name, source in report.adapters.items()
        if str(source).startswith("registry:")
    }
    if not refs:
        return
    from lorakit.registry import Registry

    with Registry() as registry:
        for column, ref in refs.items():
            values = {}
            for prefix, table in (("", report.metrics), ("regression.", report.regression or {})):
                for metric, by_column in table.items():
                    value = by_column.get(column)
                    if isinstance(value, (int, float)) and math.isfinite(value):
                        values[prefix + metric] = value
            record = registry.record_metrics(ref, values, split="eval", dataset=report.data)
            typer.echo(f"recorded {len(values)} metrics for {record.name}@{record.version} in the registry", err=True)
