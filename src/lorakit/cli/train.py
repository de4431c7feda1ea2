"""``lorakit train CONFIG.yaml`` and ``lorakit quickstart``."""

from __future__ import annotations

import shlex
from pathlib import Path

import typer

from lorakit.cli.options import OVERWRITE
from lorakit.core.errors import ConfigError

app = typer.Typer()  # mounted by lorakit.cli.app


@app.command()
def train(
    config: Path = typer.Argument(
        None, help="YAML run config (base, lora, data, train, output, tracking); optional with --resume RUN_DIR."
    ),
    set_: list[str] = typer.Option([], "--set", help="Override a config key: --set train.lr=1e-4 (repeatable)."),
    resume: str = typer.Option(
        None,
        "--resume",
        help="auto (newest checkpoint in the output directory), a "
        "checkpoint directory, or a run directory (its config.yaml).",
    ),
    overwrite: bool = OVERWRITE,
    skip_bad_lines: bool = typer.Option(
        False, "--skip-bad-lines", help="Skip and count malformed rows instead of stopping."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the live progress bar."),
) -> None:
    """Train a LoRA adapter as CONFIG says; config.yaml (resolved), checkpoints, metrics.jsonl, loss.png and adapter/
    go to its output."""
    from lorakit.train import Trainer, TrainingInterrupted
    from lorakit.train.checkpoint import RUN_CONFIG, check_run_dir
    from lorakit.train.config import load_config

    overrides = list(set_) + (["data.skip_bad_lines=true"] if skip_bad_lines else [])
    if config is None:
        run_dir = Path(resume) if resume not in (None, "auto") else None
        if run_dir is None or not (run_dir / RUN_CONFIG).is_file():
            raise ConfigError(
                "give a run config (lorakit train CONFIG.yaml) or a run directory to resume "
                f"(lorakit train --resume RUN_DIR, which holds {RUN_CONFIG})"
            )
        config, resume, overrides = run_dir / RUN_CONFIG, "auto", [*overrides, f"output={run_dir}"]
    output = Path(load_config(config, overrides).output)
    check_run_dir(output, resume, overwrite)  # before the data and the model load
    trainer = Trainer.from_config(config, overrides, progress=progress)
    if trainer.dist.main:
        _describe_data(trainer)
    try:
        summary = trainer.fit(resume=resume, overwrite=overwrite)
    except TrainingInterrupted as stop:
        typer.echo(
            f"interrupted after step {stop.step}; checkpoint saved to {stop.checkpoint}. "
            f"Resume with: lorakit train --resume {shlex.quote(str(output))}",
            err=True,
        )
        raise typer.Exit(130) from None
    if trainer.dist.main:
        metrics = summary["metrics"]
        best = metrics["best_eval_loss"]
        typer.echo(
            f"done: {metrics['steps']} steps in {summary['wall_seconds']:.0f} s, "
            f"final loss {metrics['final_loss'] or float('nan'):.4f}"
            + (f", best eval loss {best:.4f} at step {metrics['best_step']}" if best is not None else "")
            + (" (early stopped)" if not summary["completed"] else "")
        )
        typer.echo(f"adapter: {summary['adapter']}")
        from lorakit.registry import auto_register

        record = auto_register(summary["adapter"])  # only when LORAKIT_REGISTRY is set
        if record is not None:
            typer.echo(f"registered as {record.name}@{record.version}")


def _describe_data(trainer) -> None:
    for label, data in (("train", trainer.train_data), ("eval", trainer.eval_data)):
        if data is None:
            continue
        typer.echo(
            f"{label} data: {data.source}: {data.rows} rows -> {len(data)} sequences, "
            f"{data.target_tokens:,} response tokens, {data.truncated} truncated, {len(data.skipped)} skipped"
        )
        for problem in data.skipped[:3]:
            typer.echo(f"  skipped {problem}", err=True)


@app.command()
def quickstart(
    out: Path = typer.Option(Path("runs/quickstart"), "--out", help="Directory for data, run and report."),
    fast: bool = typer.Option(
        False, "--fast", help="A tiny random model instead of the default: checks the pipeline in seconds."
    ),
    data_only: bool = typer.Option(
        False, "--data-only", help="Only write the demo task's train/val/test splits to OUT/data."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the live progress bar."),
    drift_guard: bool = typer.Option(
        True,
        "--drift-guard/--no-drift-guard",
        help="Regularise toward the base on general text (default on); --no-drift-guard trains plain LoRA.",
    ),
) -> None:
    """Demo: triage support messages to JSON. Evaluate the base, train a LoRA, evaluate again, print before/after."""
    from lorakit.cli.quickstart import report_markdown, run_quickstart, write_demo_data

    if data_only:
        for split, path in write_demo_data(out, fast=fast).items():
            typer.echo(f"{split}: {path}")
        return
    report = run_quickstart(
        out, fast=fast, progress=progress, drift_guard=drift_guard, log=lambda line: typer.echo(line, err=True)
    )
    typer.echo(report_markdown(report))
    typer.echo(f"report: {out / 'report.json'}  adapter: {report['adapter']}  loss curve: {report['loss_png']}")
