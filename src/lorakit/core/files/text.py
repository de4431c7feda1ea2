"""Reading user text files (configs, datasets) safely: regular files only, UTF-8 checked line by line.

A path that names a FIFO, a device or a directory is refused before it is opened, so reading it can never
block; the file is opened non-blocking and checked again on the open descriptor, so a path swapped between the
check and the open is refused as well. Bytes that are not UTF-8 are reported as ``file:line``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

from lorakit.core.errors import LorakitError

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def check_regular(path: str | Path, what: str, error: type[LorakitError]) -> Path:
    """``path`` if it is an existing regular file (symlinks followed), else ``error`` naming ``what`` and the kind."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except OSError as err:
        raise error(f"{path}: cannot read the {what} ({err.strerror})") from None
    if not stat.S_ISREG(mode):
        raise error(f"{path}: the {what} is {_kind(mode)}, not a regular file; give the path of a file")
    return path


def open_regular(path: str | Path, what: str, error: type[LorakitError]):
    """A binary file object for a regular file; never blocks on a FIFO (see :func:`check_regular`)."""
    path = check_regular(path, what, error)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as err:
        raise error(f"{path}: cannot read the {what} ({err.strerror})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise error(f"{path}: the {what} is {_kind(mode)}, not a regular file; give the path of a file")
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def utf8_lines(path: str | Path, what: str, error: type[LorakitError]) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` for each line of a UTF-8 file (a leading BOM dropped); bad bytes → ``file:line``."""
    with open_regular(path, what, error) as handle:
        for lineno, raw in enumerate(handle, start=1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise error(
                    f"{path}:{lineno}: the {what} is not UTF-8 text (byte {raw[err.start]:#04x} at column "
                    f"{err.start + 1}); save it as UTF-8"
                ) from None


def read_utf8(path: str | Path, what: str, error: type[LorakitError], *, max_bytes: int | None = None) -> str:
    """The whole text of a UTF-8 file, refusing files larger than ``max_bytes`` (bytes) with ``error``."""
    path = check_regular(path, what, error)
    if max_bytes is not None and path.stat().st_size > max_bytes:
        raise error(f"{path}: the {what} is {path.stat().st_size} bytes, more than the {max_bytes} allowed")
    return "".join(text for _, text in utf8_lines(path, what, error))
