"""Open the registry database — SQLite at ``LORAKIT_HOME/registry.db`` by default, PostgreSQL by URL — bring its
schema up to date with Alembic, and serialise writers.

Writers never race: on SQLite a write transaction starts with ``BEGIN IMMEDIATE`` (WAL journal, 30 s busy
timeout; readers are not blocked), on PostgreSQL it first takes a transaction-scoped advisory lock. A database
whose schema revision this lorakit does not know (made by a newer lorakit) is refused, never touched.
"""

from __future__ import annotations

import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, Engine, create_engine, event, make_url, text
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

from lorakit.core.bases import lorakit_home
from lorakit.core.errors import RegistryError

DEFAULT_FILE = "registry.db"
BUSY_TIMEOUT_MS = 30_000
_WRITE_LOCK_KEY = 0x6C6B7267  # PostgreSQL advisory lock id ("lkrg") shared by every lorakit writer
_WRITER = "lorakit_writer"  # execution option marking a connection that will write
_MIGRATIONS = Path(__file__).parent / "migrations"


def registry_url(url: str | None = None) -> str:
    """The SQLAlchemy URL of the registry: ``url``, else ``$LORAKIT_REGISTRY``, else ``LORAKIT_HOME/registry.db``.

    A plain path means a SQLite file; ``postgresql://`` and ``postgres://`` use the psycopg 3 driver.
    """
    given = url or os.environ.get("LORAKIT_REGISTRY") or str(lorakit_home() / DEFAULT_FILE)
    scheme, sep, rest = given.partition("://")
    if not sep:
        return f"sqlite:///{Path(given).expanduser().resolve()}"
    if scheme in ("postgresql", "postgres"):
        return f"postgresql+psycopg://{rest}"
    return given


def shown(url: str) -> str:
    """``url`` fit for messages: the password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def engine_for(url: str | None = None) -> Engine:
    """An engine on the registry database with lorakit's connection settings; the schema is not touched."""
    full = registry_url(url)
    try:
        parsed = make_url(full)
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            path = Path(parsed.database)
            if path.is_dir():
                raise RegistryError(f"cannot open registry {path}: it is a directory; give a database file path")
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            full, connect_args={"connect_timeout": 10} if parsed.get_backend_name() == "postgresql" else {}
        )
    except (ArgumentError, NoSuchModuleError, ValueError) as err:
        raise RegistryError(
            f"{shown(full)}: not a registry URL ({err}); give a SQLite file path, sqlite:///FILE "
            "or postgresql://USER@HOST:PORT/DB"
        ) from None
    except OSError as err:
        raise RegistryError(f"cannot open registry {shown(full)}: {err}") from None
    if engine.dialect.name == "sqlite":
        _sqlite_settings(engine)
    return engine


def _sqlite_settings(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # lorakit issues BEGIN itself (below)
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # A writer takes the write lock up front (no stale-snapshot upgrade can fail); readers never block writers.
        immediate = connection.get_execution_options().get(_WRITER, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


WRITER_OPTIONS = {_WRITER: True}  # execution options declaring a connection a writer before its transaction begins


def write_lock(connection: Connection) -> None:
    """Serialise this transaction with every other registry writer (on SQLite BEGIN IMMEDIATE already has)."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _WRITE_LOCK_KEY})


def head_revision() -> str:
    return ScriptDirectory(str(_MIGRATIONS)).get_current_head()


def _check_known(current: str | None, script: ScriptDirectory, where: str) -> None:
    if current is not None and current not in {revision.revision for revision in script.walk_revisions()}:
        raise RegistryError(
            f"registry {where} has schema revision {current!r}, made by a newer lorakit "
            f"(this one knows up to {script.get_current_head()!r}); upgrade lorakit to use it"
        )


def migrate(engine: Engine, target: str = "head") -> None:
    """Upgrade the schema to ``target`` in one locked transaction; refuse a database from a newer lorakit.

    A database already at ``target`` is only read.
    """
    where = shown(str(engine.url))
    script = ScriptDirectory(str(_MIGRATIONS))
    wanted = script.get_current_head() if target == "head" else target
    try:
        with engine.connect() as probe:
            current = MigrationContext.configure(probe).get_current_revision()
        _check_known(current, script, where)
        if current == wanted:
            return
        with engine.connect().execution_options(**WRITER_OPTIONS) as connection, connection.begin():
            write_lock(connection)
            current = MigrationContext.configure(connection).get_current_revision()
            _check_known(current, script, where)
            if current != wanted:
                config = Config()
                config.set_main_option("script_location", str(_MIGRATIONS))
                config.attributes["connection"] = connection
                command.upgrade(config, target)
    except DBAPIError as err:
        raise RegistryError(f"cannot open registry {where}: {first_line(err.orig)}") from None
    except CommandError as err:
        raise RegistryError(f"cannot migrate registry {where}: {err}") from None


def connect(url: str | None = None) -> Engine:
    """An engine on the registry at ``url`` (see :func:`registry_url`) with its schema at the newest revision."""
    engine = engine_for(url)
    try:
        migrate(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


def first_line(error: BaseException | None) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
