"""Schema migrations: a database made at the first revision upgrades with its data intact; a database from a
newer lorakit, or one that cannot be opened, is a one-line error (exit code 2 from the CLI)."""

from __future__ import annotations

import datetime as _dt
import json

import pytest
from sqlalchemy import text

from lorakit.core.errors import RegistryError
from lorakit.registry import Registry, db
from tests.registry.support import make_adapter, run_cli


def test_a_database_at_the_first_revision_upgrades_with_its_data(registry_url, tmp_path):
    engine = db.engine_for(registry_url)
    db.migrate(engine, "0001")
    created = _dt.datetime(2024, 5, 1, 12, 0, tzinfo=_dt.timezone.utc)
    with engine.begin() as connection:
        connection.execute(
            text("INSERT INTO base_models (fingerprint, name, created_at) VALUES ('f' || :x, 'old-base', :t)"),
            {"x": "0" * 31, "t": created},
        )
        connection.execute(
            text(
                "INSERT INTO adapters "
                "(name, version, path, size_bytes, rank, alpha, targets, status, created_at, base_id, meta) "
                "VALUES ('legacy', '1', '/gone/legacy', 10, 8, 16, 'q_proj', 'production', :t, "
                "(SELECT id FROM base_models WHERE name = 'old-base'), :meta)"
            ),
            {"t": created, "meta": json.dumps({"from": "first schema"})},
        )
        connection.execute(
            text(
                "INSERT INTO adapter_files (adapter_id, filename, sha256, size) "
                "VALUES ((SELECT id FROM adapters WHERE name = 'legacy'), 'lorakit.json', :s, 10)"
            ),
            {"s": "e" * 64},
        )
        connection.execute(
            text(
                "INSERT INTO audit_log (at, actor, action, adapter, details) VALUES (:t, 'carol', 'register', "
                "'legacy@1', '{}')"
            ),
            {"t": created},
        )
        tables = set(connection.dialect.get_table_names(connection))
        assert "adapter_tags" not in tables
    engine.dispose()

    with Registry(registry_url) as registry:  # opening upgrades to the newest revision
        legacy = registry.get("legacy@production")
        assert (legacy.ref, legacy.path, legacy.rank, legacy.meta, legacy.tags) == (
            "legacy@1",
            "/gone/legacy",
            8,
            {"from": "first schema"},
            [],
        )
        assert legacy.status_changed_at == legacy.created_at == "2024-05-01T12:00:00+00:00"  # backfilled
        assert legacy.base["name"] == "old-base" and legacy.files["lorakit.json"]["sha256"] == "e" * 64
        registry.add(make_adapter(tmp_path / "fresh"), tags=["new-in-0002"])
        assert [r.ref for r in registry.list(tag="new-in-0002")] == ["fresh@1"]
        with pytest.raises(RegistryError, match="append-only"):
            with registry.writing() as session:
                session.execute(text("DELETE FROM audit_log"))
        assert [(e["actor"], e["action"]) for e in registry.audit()] == [
            ("carol", "register"),
            ("lorakit migration 0003", "seal"),
            (registry.actor, "register"),
        ]
        assert registry.verify("legacy")[0]["problems"] == [
            {"file": "lorakit.json", "status": "missing", "expected": "e" * 64, "actual": None}
        ]
        with registry.reading() as session:
            assert (
                session.execute(text("SELECT version_num FROM alembic_version")).scalar()
                == db.head_revision()
                == "0003"
            )


def test_a_database_from_a_newer_lorakit_is_refused(registry_url, monkeypatch, capsys):
    Registry(registry_url).close()
    engine = db.engine_for(registry_url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0099_future'"))
    engine.dispose()
    with pytest.raises(
        RegistryError, match="schema revision '0099_future', made by a newer lorakit .* upgrade lorakit"
    ):
        Registry(registry_url)
    code, out, err = run_cli(monkeypatch, capsys, "registry", "list", "--registry", registry_url)
    assert code == 2 and out == "" and err.count("\n") == 1 and "newer lorakit" in err


def test_a_database_that_cannot_be_opened_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    garbage = tmp_path / "registry.db"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(RegistryError, match="cannot open registry .*registry.db: file is not a database"):
        Registry(str(garbage))
    with pytest.raises(RegistryError, match="cannot open registry .*127.0.0.1"):
        Registry("postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(RegistryError, match="not a registry URL"):
        Registry("mysql+nodriver://x@y/z")
    with pytest.raises(RegistryError, match="it is a directory"):
        Registry(str(tmp_path))
    code, out, err = run_cli(monkeypatch, capsys, "registry", "list", "--registry", str(garbage))
    assert code == 2 and out == "" and err.count("\n") == 1 and "file is not a database" in err
