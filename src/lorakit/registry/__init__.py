"""The adapter registry: provenance (base, datasets, metrics, lineage) and governance (status, audit) for every
adapter, in SQLite at ``LORAKIT_HOME/registry.db`` by default or in PostgreSQL by URL (``LORAKIT_REGISTRY``).

Importing this package is cheap (SQLAlchemy loads on first use). :func:`resolve` is declared as the
``registry`` adapter source (entry point group ``lorakit.adapter_sources``), so ``registry:NAME[@VERSION|@STATUS]``
is a source :func:`lorakit.load_adapter` and :func:`lorakit.read_adapter` accept.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lorakit.registry.records import AdapterRecord
    from lorakit.registry.store import Registry

__all__ = ["Registry", "AdapterRecord", "resolve", "auto_register"]


def resolve(ref: str, url: str | None = None) -> Path:
    """The directory of ``ref`` (``name``, ``name@version``, ``name@production`` …) after checking that it is
    not retired and that every file still has the sha256 recorded at registration.

    The base fingerprint in the (verified) ``lorakit.json`` is then checked against the model by
    :func:`lorakit.load_adapter`, which refuses a mismatch naming both fingerprints.
    """
    from lorakit.core.errors import AdapterFileError
    from lorakit.registry.checks import describe, file_problems
    from lorakit.registry.store import Registry

    with Registry(url) as registry:
        record = registry.get(ref)
    if record.status == "retired":
        raise AdapterFileError(
            f"registry:{ref} is {record.ref}, which is retired; promote another version or name it by its directory"
        )
    problems = file_problems(record)
    if problems:
        raise AdapterFileError(
            f"registry:{ref} ({record.ref} at {record.path}) no longer matches the registry: "
            + "; ".join(describe(p) for p in problems)
            + f"; run `lorakit registry verify {record.ref}`"
        )
    return Path(record.path)


def auto_register(directory: str | Path, **options: Any) -> AdapterRecord | None:
    """Register ``directory`` when a registry is configured (``$LORAKIT_REGISTRY`` set); otherwise do nothing.

    ``options`` are those of :meth:`Registry.add` (``name``, ``version``, ``owner``, ``description``, ``tags``).
    """
    if not os.environ.get("LORAKIT_REGISTRY"):
        return None
    from lorakit.registry.store import Registry

    with Registry() as registry:
        return registry.add(directory, **options)


def __getattr__(name: str) -> Any:
    if name == "Registry":
        from lorakit.registry.store import Registry

        return Registry
    if name == "AdapterRecord":
        from lorakit.registry.records import AdapterRecord

        return AdapterRecord
    raise AttributeError(f"module 'lorakit.registry' has no attribute {name!r}")
