"""Command-line values shared by every command: one spelling table for ``--dtype``, one ``--overwrite``."""

from __future__ import annotations

from pathlib import Path

import typer

from lorakit.core.errors import ConfigError

OVERWRITE = typer.Option(False, "--overwrite", help="Replace what the output directory holds (refused otherwise).")

DTYPES = {
    "fp32": "float32",
    "float32": "float32",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp16": "float16",
    "float16": "float16",
    "half": "float16",
}
"""Every accepted ``--dtype`` spelling → torch's name (short and long forms are both accepted everywhere)."""


def dtype_name(text: str, allowed: tuple[str, ...] = ("float32", "bfloat16", "float16")) -> str:
    """torch's name (``float32``) for a ``--dtype`` value in either spelling (``fp32``/``float32``).

    Raises:
        ConfigError: an unknown spelling, or a dtype this command does not support (``allowed``).
    """
    name = DTYPES.get(str(text).lower())
    if name is None or name not in allowed:
        spelled = ", ".join(f"{SHORT[name]} ({name})" for name in allowed)
        raise ConfigError(f"--dtype {text!r}: use one of {spelled}")
    return name


SHORT = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
"""torch's name → the short spelling (what ``export_merged`` takes)."""


def check_output(path: Path, *, overwrite: bool) -> Path:
    """:func:`lorakit.core.files.atomic.check_output`, imported only when a command runs (keeps ``--help`` fast)."""
    from lorakit.core.files.atomic import check_output as check

    return check(path, overwrite=overwrite)
