"""Atomic writes: a crash leaves either the old content or the new, never a half-written file or directory.

Files and directories end with the permissions an ordinary ``open``/``mkdir`` would give them under the
process's umask (``0o666``/``0o777`` minus the umask), so a teammate or a server running as another user of
the same group can read what lorakit writes; the temporary names (``mkstemp``'s 0600, ``mkdtemp``'s 0700) never
leak into the result.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from lorakit.core.errors import OutputExistsError


def current_umask() -> int:
    """The process's umask, read from ``/proc/self/status`` where available (no change of process state)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def directory(path: str | Path) -> Iterator[Path]:
    """Yield an empty staging directory; on success it replaces ``path`` (files fsynced, then renamed).

    Everything written inside gets the modes the umask gives (files ``0o666 & ~umask``), whoever wrote it.

    On any error the staging directory is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.staging-", dir=path.parent))
    try:
        os.chmod(staging, 0o777 & ~current_umask())
        yield staging
        file_mode, dir_mode = 0o666 & ~current_umask(), 0o777 & ~current_umask()
        for child in staging.rglob("*"):  # third-party writers (safetensors) may create files 0600
            if child.is_symlink():
                continue
            os.chmod(child, dir_mode if child.is_dir() else file_mode)
            if child.is_file():
                with open(child, "rb") as handle:
                    os.fsync(handle.fileno())
        _replace_dir(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _replace_dir(staging: Path, path: Path) -> None:
    if not path.exists():
        staging.rename(path)
    else:
        retired = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
        retired.rmdir()
        path.rename(retired)
        staging.rename(path)
        shutil.rmtree(retired, ignore_errors=True)
    _fsync_dir(path.parent)


def check_output(path: str | Path, *, overwrite: bool, what: str = "output directory") -> Path:
    """``path`` if it can be written as a new output: absent, an empty directory, or ``overwrite`` given.

    Raises:
        OutputExistsError: ``path`` is a file, or a directory that is not empty, and ``overwrite`` is false.
    """
    path = Path(path)
    if overwrite or not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return path
    held = sorted(p.name for p in path.iterdir())[:4] if path.is_dir() else []
    holds = f" (it holds {', '.join(held)}{', …' if len(held) == 4 else ''})" if held else ""
    raise OutputExistsError(
        f"{path}: the {what} is not empty{holds}; pass --overwrite (Python: overwrite=True) to "
        "replace it, or choose another path"
    )
