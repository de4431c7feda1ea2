"""The registry's tables (SQLAlchemy 2 declarative models). Alembic migrations in ``migrations/`` create them.

Each adapter row is one ``name@version``: the directory it lives in, the sha256 and size of every file, a
rank/targets summary, its base model (by fingerprint), the datasets it was trained on, its metrics, the
lineage edges that connect it to the adapters it was made from, its tags and its governance status. The
audit log is append-only (database triggers refuse UPDATE and DELETE on it) and hash-chained, each change
carrying a snapshot of the adapter row it produced (see :mod:`lorakit.registry.tamper`).
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

STATUSES = ("draft", "staging", "production", "retired")


def utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


class Base(DeclarativeBase):
    """Declarative base of every registry table."""


class BaseModel(Base):
    """A base model, identified by its lorakit fingerprint (see :func:`lorakit.core.bases.fingerprint`)."""

    __tablename__ = "base_models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str | None] = mapped_column(String(512))
    architecture: Mapped[str | None] = mapped_column(String(256))
    parameters: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Dataset(Base):
    """A dataset adapters were trained on; identified by its sha256 when known, else by its uri."""

    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(512))
    uri: Mapped[str | None] = mapped_column(Text)
    sha256: Mapped[str | None] = mapped_column(String(64), unique=True)
    rows: Mapped[int | None] = mapped_column(BigInteger)
    license: Mapped[str | None] = mapped_column(String(256))
    notes: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Adapter(Base):
    """One registered ``name@version`` and where its files are."""

    __tablename__ = "adapters"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_adapters_name_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    rank: Mapped[int] = mapped_column(Integer)
    alpha: Mapped[float] = mapped_column(Float)
    targets: Mapped[str] = mapped_column(Text)
    task_type: Mapped[str | None] = mapped_column(String(64))
    owner: Mapped[str | None] = mapped_column(String(256), index=True)
    description: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="draft", index=True)
    created_at: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    status_changed_at: Mapped[_dt.datetime | None] = mapped_column(DateTime(timezone=True))
    trained_at: Mapped[str | None] = mapped_column(String(64))
    lorakit_version: Mapped[str | None] = mapped_column(String(32))
    base_id: Mapped[int | None] = mapped_column(ForeignKey("base_models.id"), index=True)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    base: Mapped[BaseModel | None] = relationship(lazy="joined")
    files: Mapped[list[AdapterFile]] = relationship(
        order_by="AdapterFile.filename", lazy="selectin", cascade="all, delete-orphan"
    )
    tags: Mapped[list[AdapterTag]] = relationship(
        order_by="AdapterTag.tag", lazy="selectin", cascade="all, delete-orphan"
    )
    metrics: Mapped[list[Metric]] = relationship(order_by="Metric.id", lazy="selectin", cascade="all, delete-orphan")
    datasets: Mapped[list[AdapterDataset]] = relationship(lazy="selectin", cascade="all, delete-orphan")

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


class AdapterFile(Base):
    """One file of an adapter directory with its sha256 and size at registration."""

    __tablename__ = "adapter_files"
    __table_args__ = (UniqueConstraint("adapter_id", "filename", name="uq_adapter_files_adapter_filename"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(512))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)


class AdapterTag(Base):
    __tablename__ = "adapter_tags"

    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(128), primary_key=True, index=True)


class AdapterDataset(Base):
    """Adapter ``adapter_id`` was trained (``role='train'``) or evaluated (``role='eval'``) on a dataset."""

    __tablename__ = "adapter_datasets"

    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id", ondelete="CASCADE"), primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"), primary_key=True, index=True)
    role: Mapped[str] = mapped_column(String(16), primary_key=True, default="train")

    dataset: Mapped[Dataset] = relationship(lazy="joined")


class Metric(Base):
    __tablename__ = "metrics"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(256))
    value: Mapped[float] = mapped_column(Float)
    split: Mapped[str | None] = mapped_column(String(128))
    dataset: Mapped[str | None] = mapped_column(String(512))


class LineageEdge(Base):
    """``child`` was made from ``parent`` by ``method`` (combine, compress, merge, continued training, ...)."""

    __tablename__ = "lineage_edges"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    parent_id: Mapped[int] = mapped_column(ForeignKey("adapters.id"), index=True)
    child_id: Mapped[int] = mapped_column(ForeignKey("adapters.id", ondelete="CASCADE"), index=True)
    method: Mapped[str | None] = mapped_column(String(128))
    weight: Mapped[float | None] = mapped_column(Float)
    params: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class AuditEntry(Base):
    """Who did what to which adapter, when. Append-only and hash-chained."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(256))
    action: Mapped[str] = mapped_column(String(64))
    adapter: Mapped[str | None] = mapped_column(String(256), index=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    state: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """The adapter's row after this change (``None`` for actions that change nothing, such as verify)."""
    prev_hash: Mapped[str | None] = mapped_column(String(64))
    """``entry_hash`` of the entry before this one (``""`` for the first)."""
    entry_hash: Mapped[str | None] = mapped_column(String(64))
    """sha256 over ``prev_hash`` and this entry's content."""
