"""The ``lorakit`` command. Each command group lives in its own module and registers itself here.

Every :class:`~lorakit.core.errors.LorakitError` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import sys

import typer

from lorakit._version import __version__
from lorakit.core.errors import LorakitError

app = typer.Typer(name="lorakit", help="The whole life of a LoRA adapter: train, evaluate, inspect, merge, register, serve.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lorakit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit.")) -> None:
    """lorakit: inject, train, evaluate, inspect, merge, register and serve LoRA adapters."""


def _register() -> None:
    from lorakit.cli import info  # noqa: F401  (each module adds its commands to ``app``)
    from lorakit.cli import algebra  # noqa: F401
    from lorakit.cli import eval  # noqa: F401
    from lorakit.cli import registry  # noqa: F401
    from lorakit.cli import serve  # noqa: F401
    from lorakit.cli import sweep  # noqa: F401
    from lorakit.cli import train  # noqa: F401


def main() -> None:
    _register()
    try:
        code = app(standalone_mode=False)  # click returns typer.Exit's code instead of raising it here
    except LorakitError as err:
        typer.echo(f"error: {err}".replace("\n", " "), err=True)
        sys.exit(2)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as err:  # click usage errors and the like
        import click

        if isinstance(err, click.ClickException):
            err.show()
            sys.exit(2)
        raise
    if isinstance(code, int) and code:
        sys.exit(code)
