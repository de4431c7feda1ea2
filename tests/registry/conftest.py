"""Fixtures shared by the registry tests."""

from __future__ import annotations

import pytest

from tests.registry.support import cluster


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_url(request, tmp_path) -> str:
    """A fresh, empty registry database: a SQLite file, or a new database on the PostgreSQL test cluster."""
    if request.param == "sqlite":
        return str(tmp_path / "registry.db")
    return cluster().new_database()
