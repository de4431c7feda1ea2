"""``lorakit merge | combine | inspect | compress``: adapter algebra and insight from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from lorakit.cli.options import OVERWRITE, SHORT, check_output, dtype_name
from lorakit.cli.progress import phase
from lorakit.core.errors import ConfigError

app = typer.Typer()  # mounted by lorakit.cli.app

SAMPLE_PROMPTS = [
    "The capital of France is",
    "Write a short poem about the sea.",
    "def fibonacci(n):\n    ",
    "Explain in one sentence why the sky is blue.",
]


def _console():
    from rich.console import Console

    return Console(width=160)


def _table(title: str, columns: list[str]):
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    return table


@app.command()
def merge(
    adapter: list[str] = typer.Argument(
        None, help="Adapter directories (or registry:name@version), each optionally PATH:WEIGHT."
    ),
    extra: list[str] = typer.Option([], "--adapter", help="Another adapter as PATH:WEIGHT (repeatable)."),
    out: Path = typer.Option(..., "--out", help="Directory for the merged transformers model."),
    base: str = typer.Option(
        None, "--base", help="Base model name or directory (default: the one recorded in the adapter)."
    ),
    dtype: str = typer.Option("fp32", "--dtype", help="fp32 (float32), bf16 (bfloat16) or fp16 (float16)."),
    overwrite: bool = OVERWRITE,
) -> None:
    """Fold adapters into their base and save a complete transformers model directory."""
    short = SHORT[dtype_name(dtype)]
    check_output(out, overwrite=overwrite)
    from lorakit.algebra.export import export_merged, parse_weighted

    specs = [parse_weighted(s) for s in [*(adapter or []), *extra]]
    if not specs:
        raise ConfigError(
            "name at least one adapter: lorakit merge ADAPTER --out DIR (or --adapter a:0.7 --adapter b:0.3)"
        )
    with phase("merge") as running:
        result = export_merged(specs, out, base=base, dtype=short, overwrite=overwrite)
        running.values = {"dtype": result.dtype, "adapters": len(specs)}
    blend = " + ".join(f"{w:g}·{s}" for s, w in specs)
    typer.echo(f"merged {blend} into {result.base} ({result.dtype}) -> {result.path}")
    if result.untied_embeddings:
        typer.echo("the input embedding and output head were tied and an adapter changed one: saved untied")


@app.command()
def combine(
    adapters: list[str] = typer.Argument(..., help="Adapter directories (or registry:name@version)."),
    out: Path = typer.Option(..., "--out", help="Directory for the combined adapter."),
    weights: str = typer.Option(None, "--weights", help="Comma-separated weights, one per adapter (default 1 each)."),
    method: str = typer.Option(
        "cat", "--method", help="cat, linear, svd, ties, dare_linear, dare_ties or magnitude_prune."
    ),
    rank: int = typer.Option(
        None, "--rank", help="Output rank for svd and the element-wise methods (default: the largest input rank)."
    ),
    density: float = typer.Option(
        None, "--density", help="Fraction of entries kept by ties, dare_* and magnitude_prune."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the random drops of dare_*."),
    sign: str = typer.Option("total", "--sign", help="TIES sign election: total or frequency."),
    overwrite: bool = OVERWRITE,
) -> None:
    """Blend adapters into one adapter; its lorakit.json records the lineage."""
    check_output(out, overwrite=overwrite)
    from lorakit.algebra.combine import combine as run

    parsed = None
    if weights is not None:
        try:
            parsed = [float(w) for w in weights.split(",")]
        except ValueError:
            raise ConfigError(f"--weights must be comma-separated numbers, got {weights!r}") from None
    with phase("combine") as running:
        result = run(
            adapters,
            out,
            weights=parsed,
            method=method,
            rank=rank,
            density=density,
            seed=seed,
            sign_method=sign,
            overwrite=overwrite,
        )
        running.values = {"method": method, "modules": len(result.ranks)}
    ranks = sorted(set(result.ranks.values()))
    shown = str(ranks[0]) if len(ranks) == 1 else f"{ranks[0]}–{ranks[-1]}"
    typer.echo(f"{method}: {len(adapters)} adapters -> {result.path} ({len(result.ranks)} modules, rank {shown})")
    if result.kept_energy:
        worst = min(result.kept_energy, key=result.kept_energy.get)
        typer.echo(
            f"rank truncation kept at least {result.kept_energy[worst]:.2%} of each module's energy (lowest: {worst})"
        )
    for note in result.notes:
        typer.echo(f"note: {note}")
    _record(result.path)


@app.command()
def inspect(
    adapter: str = typer.Argument(..., help="Adapter directory (or registry:name@version)."),
    plot: Path = typer.Option(None, "--plot", help="Write the spectrum plot (PNG) here."),
    as_json: bool = typer.Option(False, "--json", help="Print the full report as JSON."),
    energy: float = typer.Option(0.99, "--energy", help="Energy the suggested rank keeps."),
) -> None:
    """Singular values of every module's ΔW, effective and stable ranks, summaries, a suggested rank."""
    from lorakit.algebra.spectrum import inspect as run

    if not 0.0 < energy <= 1.0:
        raise ConfigError(f"--energy must be a fraction in (0, 1], got {energy}")
    spectrum = run(adapter, suggest_energy=energy)
    if plot is not None:
        from lorakit.algebra.plot import plot_spectrum

        plot_spectrum(spectrum, plot)
    if as_json:
        typer.echo(json.dumps(spectrum.to_dict(), indent=2))
        return
    console = _console()
    table = _table(
        f"{spectrum.path}: per module",
        [
            "module",
            "r",
            "scale",
            "‖ΔW‖_F",
            "σ₁",
            "σ₂",
            "σ₃",
            "rank@90%",
            "rank@99%",
            "stable rank",
            f"suggest@{energy:g}",
        ],
    )
    for m in spectrum.modules:
        top = [f"{s:.3g}" for s in m.singular_values[:3]] + [""] * max(0, 3 - len(m.singular_values))
        table.add_row(
            m.module,
            str(m.rank),
            f"{m.scale:g}",
            f"{m.frobenius:.4g}",
            *top,
            str(m.effective_rank["0.9"]),
            str(m.effective_rank["0.99"]),
            f"{m.stable_rank:.2f}",
            str(m.suggested_rank),
        )
    console.print(table)
    for title, groups in (("by layer", spectrum.by_layer), ("by module kind", spectrum.by_kind)):
        summary = _table(title, ["group", "modules", "‖ΔW‖_F", "mean rank@90%", "mean rank@99%", "max r", "suggest"])
        for g in groups:
            summary.add_row(
                g.name,
                str(g.modules),
                f"{g.frobenius:.4g}",
                f"{g.mean_effective_rank['0.9']:.1f}",
                f"{g.mean_effective_rank['0.99']:.1f}",
                str(g.rank),
                str(g.suggested_rank),
            )
        console.print(summary)
    before = sum(m.rank for m in spectrum.modules)
    after = sum(m.suggested_rank for m in spectrum.modules)
    console.print(
        f"{len(spectrum.modules)} modules, total ‖ΔW‖_F {spectrum.total_frobenius:.4g}; keeping {energy:.0%} "
        f"of each module's energy needs {after} of {before} rank units ({after / before:.0%}): "
        f"lorakit compress {adapter} --energy {energy:g} --out DIR"
    )
    if plot is not None:
        console.print(f"plot written to {plot}")


@app.command()
def compress(
    adapter: str = typer.Argument(..., help="Adapter directory (or registry:name@version)."),
    out: Path = typer.Option(..., "--out", help="Directory for the compressed adapter."),
    energy: float = typer.Option(None, "--energy", help="Energy each module keeps, e.g. 0.99."),
    rank: int = typer.Option(None, "--rank", help="Maximum rank of every module."),
    base: str = typer.Option(
        None, "--base", help="Base for the output-change sample (default: the adapter's recorded base)."
    ),
    sample: bool = typer.Option(
        True, "--sample/--no-sample", help="Measure KL(original ‖ compressed) on sample prompts."
    ),
    overwrite: bool = OVERWRITE,
) -> None:
    """Re-factor each module's ΔW at the smallest rank keeping the energy (or at a given rank)."""
    check_output(out, overwrite=overwrite)
    from lorakit.algebra.compress import compress as run
    from lorakit.algebra.compress import output_kl
    from lorakit.algebra.factors import base_of, load
    from lorakit.core import bases

    source = load(adapter)
    if sample and Path(out).resolve() == source.path.resolve():
        raise ConfigError(
            f"--out {out} is the adapter being compressed: the output-change sample needs the original; "
            "write to another directory, or pass --no-sample to compress in place"
        )
    base_name = base_of(source.files, base) if sample else None
    if base_name is not None and base_name != bases.DEFAULT_BASE:
        bases.resolve(base_name)  # a missing base is reported before anything is written
    with phase("compress") as running:  # checks --energy/--rank before the base model loads
        report = run(source, out, energy=energy, rank=rank, overwrite=overwrite)
        running.values = {"largest relative error": report.max_relative_error}
    model = tokenizer = None
    if base_name is not None:
        model, tokenizer = bases.load(base_name)
    console = _console()
    table = _table(f"{report.path}: per module", ["module", "rank", "kept energy", "relative error"])
    for m in report.modules:
        table.add_row(m.module, f"{m.rank_before} → {m.rank_after}", f"{m.kept_energy:.4%}", f"{m.relative_error:.4f}")
    console.print(table)
    before, after = report.parameters
    console.print(
        f"rank units {before} → {after}; adapter_model.safetensors {report.bytes_before / 1e6:.2f} MB → "
        f"{report.bytes_after / 1e6:.2f} MB ({report.bytes_after / report.bytes_before:.0%}); "
        f"largest relative error {report.max_relative_error:.4f}"
    )
    if model is not None:
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        batch = tokenizer(SAMPLE_PROMPTS, return_tensors="pt", padding=True)
        with phase("output change") as running:
            report.kl = output_kl(model, source.path, report.path, batch["input_ids"], batch["attention_mask"])
            running.values = {"KL": report.kl}
        console.print(
            f"output change on {len(SAMPLE_PROMPTS)} sample prompts: mean KL(original ‖ compressed) = "
            f"{report.kl:.3g} nats/token"
        )
    _record(report.path)


def _record(directory: Path) -> None:
    """Register a new adapter and its lineage when a registry is configured (``LORAKIT_REGISTRY``)."""
    from lorakit.registry import auto_register

    record = auto_register(directory)
    if record is not None:
        typer.echo(f"registered as {record.name}@{record.version}")
