"""Governance: adapter tags, when the status last changed (backfilled from created_at), hash lookups, and an
audit log that the database itself keeps append-only.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_APPEND_ONLY = "audit_log is append-only"


def upgrade() -> None:
    op.create_table(
        "adapter_tags",
        sa.Column("adapter_id", sa.Integer, sa.ForeignKey("adapters.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("tag", sa.String(128), primary_key=True),
    )
    op.create_index("ix_adapter_tags_tag", "adapter_tags", ["tag"])
    with op.batch_alter_table("adapters") as batch:
        batch.add_column(sa.Column("status_changed_at", sa.DateTime(timezone=True)))
    op.execute("UPDATE adapters SET status_changed_at = created_at")
    op.create_index("ix_adapter_files_sha256", "adapter_files", ["sha256"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION lorakit_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN RAISE EXCEPTION '{_APPEND_ONLY}'; END $$"
        )
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


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER audit_log_append_only ON audit_log")
        op.execute("DROP FUNCTION lorakit_audit_append_only()")
    else:
        op.execute("DROP TRIGGER audit_log_no_update")
        op.execute("DROP TRIGGER audit_log_no_delete")
    op.drop_index("ix_adapter_files_sha256", "adapter_files")
    with op.batch_alter_table("adapters") as batch:
        batch.drop_column("status_changed_at")
    op.drop_index("ix_adapter_tags_tag", "adapter_tags")
    op.drop_table("adapter_tags")
