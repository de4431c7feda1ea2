"""``lorakit serve``: an OpenAI-compatible server for many adapters over one base model."""

from __future__ import annotations

import os

import typer

from lorakit.core.errors import ConfigError

app = typer.Typer()  # mounted by lorakit.cli.app

_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16"}


def parse_adapter(spec: str) -> tuple[str, str]:
    """``NAME=PATH``, ``NAME=registry:name@version`` or a bare registry reference ``name@version`` (served as
    ``name``) -> ``(name, source)``."""
    name, sep, source = spec.partition("=")
    if not sep and "@" in spec and "/" not in spec:
        return spec.partition("@")[0], f"registry:{spec}"
    if not sep or not name or not source:
        raise ConfigError(
            f"--adapter {spec!r}: expected NAME=PATH or name@version, e.g. --adapter support=runs/support/adapter"
        )
    return name, source


@app.command()
def serve(
    base: str = typer.Option(
        "smollm2-135m-instruct", "--base", help="Base model: the embedded default or a local directory."
    ),
    adapter: list[str] = typer.Option(
        [], "--adapter", help="NAME=PATH, NAME=registry:name@version, or name@version (registry); repeatable."
    ),
    adapter_root: str = typer.Option(None, "--adapter-root", help="Directory the admin API may load adapters from."),
    admin_token: str = typer.Option(
        None,
        "--admin-token",
        help="Bearer token for POST/DELETE /v1/adapters (default $LORAKIT_ADMIN_TOKEN; unset: admin disabled).",
    ),
    max_resident: int = typer.Option(64, "--max-resident", help="Adapters kept in memory at once (LRU beyond)."),
    max_adapter_mb: float = typer.Option(None, "--max-adapter-mb", help="RAM budget for resident adapters, in MB."),
    max_batch: int = typer.Option(8, "--max-batch", help="Requests decoding together."),
    max_queue: int = typer.Option(256, "--max-queue", help="Requests waiting before new ones get HTTP 429."),
    max_prompt_tokens: int = typer.Option(
        None, "--max-prompt-tokens", help="Longest prompt accepted (default: context - 1)."
    ),
    max_body_mb: float = typer.Option(
        4.0, "--max-body-mb", help="Largest request body accepted, in MB (HTTP 413 beyond)."
    ),
    api_key: str = typer.Option(
        None,
        "--api-key",
        help="Bearer key the inference routes require, as vLLM's --api-key (default $LORAKIT_API_KEY; unset: open).",
    ),
    dtype: str = typer.Option("float32", "--dtype", help="float32 or bfloat16."),
    threads: int = typer.Option(None, "--threads", help="torch threads (default: torch's choice)."),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port"),
) -> None:
    """Serve adapters over one base: /v1/completions, /v1/chat/completions (SSE with stream), /v1/models,
    /v1/adapters and vLLM's /v1/load_lora_adapter, /v1/unload_lora_adapter (admin), /metrics, /health."""
    import torch
    import uvicorn

    from lorakit.serve import Engine
    from lorakit.serve.api import create_app

    if max_body_mb <= 0:
        raise ConfigError(f"--max-body-mb must be positive, got {max_body_mb}")
    if dtype not in _DTYPES:
        raise ConfigError(f"--dtype must be float32 or bfloat16, got {dtype!r}")
    specs = [parse_adapter(spec) for spec in adapter]
    if any(source.startswith("registry:") for _, source in specs):
        import lorakit.registry  # noqa: F401  (registers the registry: resolver)
    if threads:
        torch.set_num_threads(threads)
    max_bytes = int(max_adapter_mb * 2**20) if max_adapter_mb else None
    engine = Engine.from_base(
        base,
        dtype=getattr(torch, _DTYPES[dtype]),
        max_resident=max_resident,
        max_bytes=max_bytes,
        max_batch=max_batch,
        max_queue=max_queue,
        max_prompt_tokens=max_prompt_tokens,
    )
    for name, source in specs:
        engine.load_adapter(name, source)
    token = admin_token or os.environ.get("LORAKIT_ADMIN_TOKEN") or None
    typer.echo(
        f"serving {base} with {len(specs)} adapter(s) on http://{host}:{port}/v1"
        f"{'' if token else ' (admin endpoints disabled: no --admin-token)'}",
        err=True,
    )
    key = api_key or os.environ.get("LORAKIT_API_KEY") or None
    app = create_app(
        engine, admin_token=token, adapter_root=adapter_root, api_key=key, max_body_bytes=int(max_body_mb * 2**20)
    )
    uvicorn.run(app, host=host, port=port, log_level="warning")
