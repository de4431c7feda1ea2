"""The first registry schema: adapters and their files, base models, datasets, metrics, lineage, audit log.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "base_models",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("fingerprint", sa.String(64), nullable=False, unique=True),
        sa.Column("name", sa.String(512)),
        sa.Column("architecture", sa.String(256)),
        sa.Column("parameters", sa.BigInteger),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "datasets",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(512), nullable=False),
        sa.Column("uri", sa.Text),
        sa.Column("sha256", sa.String(64), unique=True),
        sa.Column("rows", sa.BigInteger),
        sa.Column("license", sa.String(256)),
        sa.Column("notes", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "adapters",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("rank", sa.Integer, nullable=False),
        sa.Column("alpha", sa.Float, nullable=False),
        sa.Column("targets", sa.Text, nullable=False),
        sa.Column("task_type", sa.String(64)),
        sa.Column("owner", sa.String(256)),
        sa.Column("description", sa.Text),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("trained_at", sa.String(64)),
        sa.Column("lorakit_version", sa.String(32)),
        sa.Column("base_id", sa.Integer, sa.ForeignKey("base_models.id")),
        sa.Column("meta", sa.JSON, nullable=False),
        sa.UniqueConstraint("name", "version", name="uq_adapters_name_version"),
    )
    op.create_index("ix_adapters_name", "adapters", ["name"])
    op.create_index("ix_adapters_owner", "adapters", ["owner"])
    op.create_index("ix_adapters_status", "adapters", ["status"])
    op.create_index("ix_adapters_base_id", "adapters", ["base_id"])
    op.create_table(
        "adapter_files",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("adapter_id", sa.Integer, sa.ForeignKey("adapters.id", ondelete="CASCADE"), nullable=False),
        sa.Column("filename", sa.String(512), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("adapter_id", "filename", name="uq_adapter_files_adapter_filename"),
    )
    op.create_index("ix_adapter_files_adapter_id", "adapter_files", ["adapter_id"])
    op.create_table(
        "adapter_datasets",
        sa.Column("adapter_id", sa.Integer, sa.ForeignKey("adapters.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("dataset_id", sa.Integer, sa.ForeignKey("datasets.id"), primary_key=True),
        sa.Column("role", sa.String(16), primary_key=True),
    )
    op.create_index("ix_adapter_datasets_dataset_id", "adapter_datasets", ["dataset_id"])
    op.create_table(
        "metrics",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("adapter_id", sa.Integer, sa.ForeignKey("adapters.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("split", sa.String(128)),
        sa.Column("dataset", sa.String(512)),
    )
    op.create_index("ix_metrics_adapter_id", "metrics", ["adapter_id"])
    op.create_table(
        "lineage_edges",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("parent_id", sa.Integer, sa.ForeignKey("adapters.id"), nullable=False),
        sa.Column("child_id", sa.Integer, sa.ForeignKey("adapters.id", ondelete="CASCADE"), nullable=False),
        sa.Column("method", sa.String(128)),
        sa.Column("weight", sa.Float),
        sa.Column("params", sa.JSON),
    )
    op.create_index("ix_lineage_edges_parent_id", "lineage_edges", ["parent_id"])
    op.create_index("ix_lineage_edges_child_id", "lineage_edges", ["child_id"])
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("adapter", sa.String(256)),
        sa.Column("details", sa.JSON, nullable=False),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])
    op.create_index("ix_audit_log_adapter", "audit_log", ["adapter"])


def downgrade() -> None:
    for table in (
        "audit_log",
        "lineage_edges",
        "metrics",
        "adapter_datasets",
        "adapter_files",
        "adapters",
        "datasets",
        "base_models",
    ):
        op.drop_table(table)
