"""Tamper evidence: the audit log becomes a hash chain and each change carries a snapshot of the adapter row it
produced. Existing entries are chained in order, and one ``seal`` entry per adapter records its row as it is now
(what the registry held before this revision cannot be proven; from here on every change can).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy import select
from sqlalchemy.orm import Session

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_APPEND_ONLY = "audit_log is append-only"
_ACTOR = "lorakit migration 0003"


def _drop_guard(dialect: str) -> None:
    if dialect == "postgresql":
        op.execute("DROP TRIGGER audit_log_append_only ON audit_log")
    else:
        op.execute("DROP TRIGGER audit_log_no_update")
        op.execute("DROP TRIGGER audit_log_no_delete")


def _create_guard(dialect: str) -> None:
    if dialect == "postgresql":
        op.execute(
            "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
            "FOR EACH ROW EXECUTE FUNCTION lorakit_audit_append_only()"
        )
    else:
        for event in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audit_log_no_{event.lower()} BEFORE {event} ON audit_log "
                f"BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}'); END"
            )


def upgrade() -> None:
    from lorakit.registry.schema import Adapter, AuditEntry, utcnow
    from lorakit.registry.tamper import GENESIS, entry_hash, seal

    dialect = op.get_bind().dialect.name
    _drop_guard(dialect)
    with op.batch_alter_table("audit_log") as batch:
        batch.add_column(sa.Column("state", sa.JSON))
        batch.add_column(sa.Column("prev_hash", sa.String(64)))
        batch.add_column(sa.Column("entry_hash", sa.String(64)))
    session = Session(bind=op.get_bind())
    prev = GENESIS
    for entry in session.scalars(select(AuditEntry).order_by(AuditEntry.id)):
        entry.prev_hash = prev
        entry.entry_hash = prev = entry_hash(prev, entry)
    session.flush()
    seal(
        session,
        [
            AuditEntry(at=utcnow(), actor=_ACTOR, action="seal", adapter=adapter.ref, details={})
            for adapter in session.scalars(select(Adapter).order_by(Adapter.id))
        ],
    )
    session.flush()
    session.close()
    _create_guard(dialect)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    _drop_guard(dialect)
    op.execute("DELETE FROM audit_log WHERE action = 'seal'")
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_column("entry_hash")
        batch.drop_column("prev_hash")
        batch.drop_column("state")
    _create_guard(dialect)
