"""``lorakit sweep SWEEP.yaml``: run, resume or join a sweep; a live table of trials while it runs."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer()  # mounted by lorakit.cli.app


@app.command()
def sweep(
    file: Path = typer.Argument(..., help="Sweep YAML: config, space, objectives, budget, sampler (see README)."),
    set_: list[str] = typer.Option(
        [], "--set", help="Override a sweep key: --set config.train.max_steps=4, --set budget.trials=2 (repeatable)."
    ),
    storage: str = typer.Option(
        None, "--storage", help="Study database: a SQLite path or postgresql://… (default: OUTPUT/study.db)."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the study: keep finished trials, re-run the one a killed run left."
    ),
    worker: bool = typer.Option(
        False, "--worker", help="Join the study (creating it if needed) beside other workers sharing --storage."
    ),
    progress: bool = typer.Option(False, "--progress/--no-progress", help="Show each trial's training bar."),
) -> None:
    """Train and evaluate one adapter per trial, register each, then write results.csv, pareto.png and report.html
    and promote the best trial (the Pareto set for several objectives)."""
    from rich.console import Console
    from rich.live import Live
    from transformers.utils import logging as hf_logging

    from lorakit.sweep import load_sweep, run_sweep
    from lorakit.sweep.results import best_trials, progress_line, rich_table, trial_rows

    if resume and worker:
        raise typer.BadParameter("give --resume or --worker, not both")
    hf_logging.disable_progress_bar()  # one weight-loading bar per trial would bury the table
    overrides = [*set_, *([f"storage={storage}"] if storage else [])]
    console = Console(stderr=True)
    live = Live(console=console, auto_refresh=False) if console.is_terminal else None

    spec = load_sweep(file, overrides)

    def show(study, trial) -> None:
        line = f"trial {trial.number} {trial.state.name.lower()} · {progress_line(study, spec)}"
        if live is None:
            console.print(line, highlight=False)
            return
        rows = trial_rows(spec, study)
        live.update(rich_table(spec, rows, [t.number for t in best_trials(study)]), refresh=False)
        live.console.print(line, highlight=False)
        live.refresh()

    mode = "resume" if resume else "worker" if worker else "new"
    try:
        if live is not None:
            live.start()
        result = run_sweep(spec, mode=mode, on_trial=show, progress=progress)
    except KeyboardInterrupt:
        typer.echo(
            f"interrupted; the running trial is queued again. Continue with: lorakit sweep {file} --resume", err=True
        )
        raise typer.Exit(130) from None
    finally:
        if live is not None:
            live.stop()
    out = Console()
    out = out if out.is_terminal else Console(width=200)  # a file or pipe: do not squeeze the table to 80 columns
    out.print(rich_table(result["spec"], result["rows"], result["best"]))
    typer.echo(result["summary"])
    typer.echo(f"results: {result['csv']}  chart: {result['png']}  report: {result['html']}")
    if result["promoted"]:
        typer.echo(f"promoted to {result['spec'].promote}: {', '.join(result['promoted'])}")
