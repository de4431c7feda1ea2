"""Registry test support: a throwaway PostgreSQL cluster, a ``registry_url`` fixture over both backends, and
small real adapter directories to register.

The cluster is a real ``postgres`` server: ``initdb`` into a temporary directory (as the ``postgres`` user when
the tests run as root, since PostgreSQL refuses to run as root), listening on a free loopback port, started
once per test process and stopped (and deleted) when the process exits.
"""

from __future__ import annotations

import atexit
import functools
import glob
import hashlib
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import lorakit as lk
from tests.helpers import randomize_adapter, tiny_llama

D1 = {
    "name": "support-tickets",
    "path": "/data/support.jsonl",
    "sha256": "a1" * 32,
    "rows": 1200,
    "license": "CC-BY-4.0",
    "notes": "de-identified",
}
D2 = {"name": "faq", "path": "/data/faq.jsonl", "sha256": "b2" * 32, "rows": 300}
_SETUP_HINT = "run scripts/setup.d/20-postgresql.sh (make setup) to install PostgreSQL"


def pg_bin_dir() -> Path:
    """The directory holding ``initdb`` and ``pg_ctl``: ``$LORAKIT_PG_BIN``, Debian's newest
    ``/usr/lib/postgresql/N/bin``, or wherever ``initdb`` is on PATH."""
    candidates = [os.environ.get("LORAKIT_PG_BIN", "")]
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted(versions, key=lambda d: int(re.sub(r"\D", "", Path(d).parent.name) or 0), reverse=True)
    on_path = shutil.which("initdb")
    candidates.append(str(Path(on_path).resolve().parent) if on_path else "")
    for candidate in candidates:
        if candidate and all(os.access(Path(candidate) / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "postgres")):
            return Path(candidate)
    raise RuntimeError(f"PostgreSQL server binaries (initdb, pg_ctl) not found; {_SETUP_HINT}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Cluster:
    """One running PostgreSQL server in a temporary directory; ``new_database()`` gives each test its own DB."""

    def __init__(self) -> None:
        self.bin = pg_bin_dir()
        as_root = os.geteuid() == 0  # the server then runs as 'postgres', which must reach its directory: use /tmp
        self.root = Path(tempfile.mkdtemp(prefix="lorakit-pg-", dir="/tmp" if as_root else None))
        self.data = self.root / "data"
        self.port = _free_port()
        self.as_user: list[str] = []
        if as_root:
            try:
                account = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError(
                    f"running as root and there is no 'postgres' user to run the server; {_SETUP_HINT}"
                ) from None
            os.chown(self.root, account.pw_uid, account.pw_gid)
            self.as_user = (
                ["runuser", "-u", "postgres", "--"]
                if shutil.which("runuser")
                else ["su", "postgres", "-s", "/bin/sh", "-c"]
            )

    def _command(self, *args: str) -> list[str]:
        if self.as_user[:1] == ["su"]:
            return [*self.as_user, " ".join(shlex.quote(a) for a in args)]
        return [*self.as_user, *args]

    def _run(self, *args: str) -> None:
        done = subprocess.run(self._command(*args), capture_output=True, text=True, cwd=self.root, timeout=120)
        if done.returncode != 0:
            log = (self.root / "server.log").read_text() if (self.root / "server.log").exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed ({done.returncode}): {done.stderr.strip()} {log[-2000:]}")

    def start(self) -> Cluster:
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "lorakit",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off "
            "-c max_connections=60 -c shared_buffers=32MB"
        )
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.root / "server.log"),
            "-w",
            "-t",
            "60",
            "-o",
            options,
            "start",
        )
        atexit.register(self.stop)
        return self

    def stop(self) -> None:
        if self.data.exists():
            subprocess.run(
                self._command(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"),
                capture_output=True,
                timeout=60,
                cwd=self.root,
            )
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://lorakit@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        import psycopg

        name = f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=lorakit dbname=postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@functools.cache
def cluster() -> Cluster:
    return Cluster().start()


@functools.cache
def _model():
    model = tiny_llama()
    lk.inject(model, lk.LoraConfig(r=4, alpha=8, targets=["q_proj", "v_proj"]))
    return model


def make_adapter(path: Path, *, seed: int = 0, metadata: dict | None = None) -> Path:
    """A real adapter directory for the tiny Llama (weights differ by ``seed``) with ``metadata`` in lorakit.json."""
    model = _model()
    randomize_adapter(model, seed=seed)
    return lk.save_adapter(model, path, metadata=metadata)


def _weights_sha(path: Path) -> str:
    return hashlib.sha256((path / "adapter_model.safetensors").read_bytes()).hexdigest()


def family(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """a (trained on D1) and b (trained on D2) → c = combine(a, b) → d = compress(c), recorded as the algebra does."""
    a = make_adapter(tmp_path / "a", seed=1, metadata={"dataset": D1})
    b = make_adapter(tmp_path / "b", seed=2, metadata={"dataset": D2})
    c = make_adapter(
        tmp_path / "c",
        seed=3,
        metadata={
            "lineage": {
                "method": "linear",
                "params": {"density": 1.0},
                "parents": [
                    {"path": str(a), "sha256": _weights_sha(a), "weight": 0.7},
                    {"path": str(b), "sha256": _weights_sha(b), "weight": 0.3},
                ],
            }
        },
    )
    d = make_adapter(
        tmp_path / "d", seed=4, metadata={"lineage": {"method": "compress", "parents": [{"path": "../c"}]}}
    )
    return a, b, c, d


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run ``lorakit ARGS`` in this process through the real entry point: (exit code, stdout, stderr)."""
    from lorakit.cli.app import main

    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["lorakit", *args])
    try:
        main()
        code = 0
    except SystemExit as done:
        code = done.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err
