"""Plain, detached views of registry rows — what the Python API returns and what ``--json`` prints."""

from __future__ import annotations

import datetime as _dt
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from lorakit.registry.schema import Adapter, AuditEntry, Dataset, LineageEdge


def iso(moment: _dt.datetime | None) -> str | None:
    """UTC ISO-8601 text; SQLite hands datetimes back without a zone, and they were written in UTC."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_dt.timezone.utc)
    return moment.astimezone(_dt.timezone.utc).isoformat(timespec="seconds")


def dataset_dict(dataset: Dataset, role: str | None = None) -> dict[str, Any]:
    found = {
        "name": dataset.name,
        "uri": dataset.uri,
        "sha256": dataset.sha256,
        "rows": dataset.rows,
        "license": dataset.license,
        "notes": dataset.notes,
    }
    if role is not None:
        found["role"] = role
    return found


@dataclass
class AdapterRecord:
    """One registered adapter version with everything the registry knows about it."""

    name: str
    version: str
    path: str
    status: str
    owner: str | None
    description: str | None
    tags: list[str]
    rank: int
    alpha: float
    targets: str
    task_type: str | None
    size_bytes: int
    files: dict[str, dict[str, Any]]
    base: dict[str, Any] | None
    datasets: list[dict[str, Any]]
    metrics: list[dict[str, Any]]
    parents: list[dict[str, Any]]
    created_at: str | None
    status_changed_at: str | None
    trained_at: str | None
    lorakit_version: str | None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def as_dict(self) -> dict[str, Any]:
        return {"ref": self.ref, **asdict(self)}


def adapter_record(session: Session, adapter: Adapter) -> AdapterRecord:
    parent = aliased(Adapter)
    edges = session.execute(
        select(LineageEdge, parent)
        .join(parent, LineageEdge.parent_id == parent.id)
        .where(LineageEdge.child_id == adapter.id)
        .order_by(LineageEdge.id)
    ).all()
    base = adapter.base
    return AdapterRecord(
        name=adapter.name,
        version=adapter.version,
        path=adapter.path,
        status=adapter.status,
        owner=adapter.owner,
        description=adapter.description,
        tags=[t.tag for t in adapter.tags],
        rank=adapter.rank,
        alpha=adapter.alpha,
        targets=adapter.targets,
        task_type=adapter.task_type,
        size_bytes=adapter.size_bytes,
        files={f.filename: {"sha256": f.sha256, "size": f.size} for f in adapter.files},
        base=None
        if base is None
        else {
            "name": base.name,
            "fingerprint": base.fingerprint,
            "architecture": base.architecture,
            "parameters": base.parameters,
        },
        datasets=[
            dataset_dict(link.dataset, link.role)
            for link in sorted(adapter.datasets, key=lambda d: (d.role, d.dataset_id))
        ],
        metrics=[{"name": m.name, "value": m.value, "split": m.split, "dataset": m.dataset} for m in adapter.metrics],
        parents=[{"ref": p.ref, "method": e.method, "weight": e.weight, "params": e.params} for e, p in edges],
        created_at=iso(adapter.created_at),
        status_changed_at=iso(adapter.status_changed_at),
        trained_at=adapter.trained_at,
        lorakit_version=adapter.lorakit_version,
        meta=dict(adapter.meta or {}),
    )


def audit_dict(entry: AuditEntry) -> dict[str, Any]:
    return {
        "at": iso(entry.at),
        "actor": entry.actor,
        "action": entry.action,
        "adapter": entry.adapter,
        "details": entry.details,
    }
