"""``lorakit info``: what is installed and how fast this machine runs the formats lorakit uses."""

from __future__ import annotations

import importlib.metadata
import time

import typer

from lorakit._version import __version__

app = typer.Typer()  # mounted by lorakit.cli.app

_PACKAGES = ("torch", "transformers", "safetensors", "bitsandbytes", "peft", "fastapi", "sqlalchemy", "mlflow")


def bf16_speedup(size: int = 512, repeats: int = 5) -> float:
    """How many times faster a bf16 matmul runs than fp32 on this CPU (≈3 with AMX, <1 without)."""
    import torch

    timings = {}
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(size, size, dtype=dtype)
        torch.mm(a, a)
        start = time.perf_counter()
        for _ in range(repeats):
            torch.mm(a, a)
        timings[dtype] = time.perf_counter() - start
    return timings[torch.float32] / timings[torch.bfloat16]


def _version_of(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


@app.command()
def info() -> None:
    """Show versions, threads, whether bf16 is fast here, and the default model's cache state."""
    import torch
    from rich.console import Console
    from rich.table import Table

    from lorakit.core import bases

    table = Table(title=f"lorakit {__version__}", show_header=False)
    for package in _PACKAGES:
        table.add_row(package, _version_of(package))
    table.add_row("torch threads", str(torch.get_num_threads()))
    table.add_row("cuda", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "not available")
    speedup = bf16_speedup()
    table.add_row(
        "bf16 matmul vs fp32", f"{speedup:.1f}× ({'fast: bf16 autocast used' if speedup > 1.3 else 'slow: fp32 used'})"
    )
    table.add_row("LORAKIT_HOME", str(bases.lorakit_home()))
    cache = bases.default_cache_dir()
    state = f"cached at {cache}" if bases.default_is_cached() else "not cached (converted on first use, about 30 s)"
    table.add_row(f"default model {bases.DEFAULT_BASE}", state)
    Console().print(table)
