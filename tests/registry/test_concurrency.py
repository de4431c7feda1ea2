"""Concurrent writers: 4 processes × 50 registrations under one name on SQLite, then the same on PostgreSQL,
each phase starting together on a fresh database (so the first migration races too). Nothing is lost, versions
are 1..200 with no gap or duplicate, and the database passes its integrity check."""

from __future__ import annotations

import subprocess
import sys

from sqlalchemy import text

from lorakit.registry import Registry
from tests.registry.support import cluster, make_adapter

PROCESSES, EACH = 4, 50

# Each worker waits at a file barrier before every phase so that all four write at the same time.
_WORKER = """
import sys, time
from pathlib import Path
from lorakit.registry import Registry

adapter, sync, who, *urls = sys.argv[1:]

def barrier(phase):
    Path(sync, f"{phase}-{who}").touch()
    deadline = time.monotonic() + 300
    while len(list(Path(sync).glob(f"{phase}-*"))) < {processes}:
        assert time.monotonic() < deadline, "other writers never arrived"
        time.sleep(0.01)

for phase, url in enumerate(urls):
    barrier(phase)
    registry = Registry(url, actor=who)
    for i in range({each}):
        registry.add(adapter, name="shared", tags=[who])
    registry.close()
"""


def _check(url: str) -> None:
    with Registry(url) as registry:
        records = registry.list()
        assert sorted(int(r.version) for r in records) == list(range(1, PROCESSES * EACH + 1))
        for i in range(PROCESSES):
            mine = registry.list(tag=f"writer{i}")
            assert len(mine) == EACH and all(len(r.files) == 3 for r in mine)
        registrations = [e for e in registry.audit() if e["action"] == "register"]
        assert sorted(e["adapter"] for e in registrations) == sorted(r.ref for r in records)
        assert {e["actor"] for e in registrations} == {f"writer{i}" for i in range(PROCESSES)}
        with registry.reading() as session:
            if session.bind.dialect.name == "sqlite":
                assert session.execute(text("PRAGMA integrity_check")).scalar() == "ok"
                assert session.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert session.execute(text("SELECT count(*) FROM adapter_files")).scalar() == 3 * PROCESSES * EACH
            assert session.execute(text("SELECT count(*) FROM base_models")).scalar() == 1


def test_concurrent_writers_lose_nothing_on_sqlite_and_postgresql(tmp_path):
    adapter = make_adapter(tmp_path / "adapter")
    sync = tmp_path / "sync"
    sync.mkdir()
    urls = [str(tmp_path / "registry.db"), cluster().new_database()]
    worker = _WORKER.replace("{processes}", str(PROCESSES)).replace("{each}", str(EACH))
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", worker, str(adapter), str(sync), f"writer{i}", *urls],
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(PROCESSES)
    ]
    errors = [w.communicate(timeout=600)[1] for w in workers]
    assert [w.returncode for w in workers] == [0] * PROCESSES, errors
    for url in urls:
        _check(url)
