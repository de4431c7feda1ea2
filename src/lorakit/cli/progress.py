"""Progress of a long phase on the command line (merge, combine, compress, evaluation).

On a terminal a spinner names the running phase with its elapsed time; elsewhere (a log file, CI) a plain line
``NAME: running, 10 s`` is written every ``every`` seconds. Either way the phase ends with one line naming it,
its time and its final values. Nothing is written when a phase fails quickly, so an error stays one line.
All of it goes to stderr: stdout keeps the command's results.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any


class Phase:
    """A running phase; put its final values in :attr:`values` (shown on the closing line)."""

    def __init__(self, name: str) -> None:
        self.name, self.values, self.started = name, {}, time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def closing_line(self) -> str:
        shown = ", ".join(f"{key} {_shown(value)}" for key, value in self.values.items())
        return f"{self.name}: done in {self.seconds:.1f} s" + (f" ({shown})" if shown else "")


@contextlib.contextmanager
def phase(name: str, *, every: float = 5.0, stream=None) -> Iterator[Phase]:
    """Show that ``name`` runs while the block runs (``every``: seconds between plain lines off a terminal)."""
    stream = stream if stream is not None else sys.stderr
    current = Phase(name)
    if stream.isatty():
        from rich.console import Console

        with Console(file=stream).status(f"{name} …", spinner="dots"):
            yield current
    else:
        stop = threading.Event()

        def report() -> None:
            while not stop.wait(every):
                print(f"{name}: running, {current.seconds:.0f} s", file=stream, flush=True)

        ticker = threading.Thread(target=report, name=f"progress-{name}", daemon=True)
        ticker.start()
        try:
            yield current
        finally:
            stop.set()
            ticker.join()
    print(current.closing_line(), file=stream, flush=True)


def _shown(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
