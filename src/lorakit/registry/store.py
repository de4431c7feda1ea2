"""The registry: register adapter directories, look them up, and govern their status — every write audited.

Each write is one transaction, serialised with every other writer (see :mod:`lorakit.registry.db`): a failed
registration leaves nothing behind. Promotion rules: ``draft → staging → production``, any of them →
``retired``; a retired version is never promoted again; promoting a version to production moves the name's
previous production version back to staging unless ``allow_multiple``. The audit entries of a write are
sealed into the audit hash chain when it commits (:mod:`lorakit.registry.tamper`).
"""

from __future__ import annotations

import contextlib
import getpass
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from lorakit.core.errors import RegistryError
from lorakit.core.files.peft_format import WEIGHTS_FILE
from lorakit.registry import checks, db, graph
from lorakit.registry.manifest import DatasetInfo, Manifest, ParentInfo, read_manifest
from lorakit.registry.records import AdapterRecord, adapter_record, audit_dict
from lorakit.registry.refs import check_name, check_status, check_tag, explicit, find_bases, lookup, parse_ref
from lorakit.registry.schema import (
    Adapter,
    AdapterDataset,
    AdapterFile,
    AdapterTag,
    AuditEntry,
    BaseModel,
    Dataset,
    LineageEdge,
    Metric,
    utcnow,
)
from lorakit.registry.tamper import seal

_PROMOTABLE = ("staging", "production")
_WRAPPER_DIRS = ("adapter", "best", "final")
_PENDING = "lorakit_audit_pending"


def default_name(path: Path) -> str:
    """The directory's name — its parent's when it is a run's ``adapter``/``best``/``final`` folder."""
    return path.parent.name if path.name in _WRAPPER_DIRS and path.parent.name else path.name


class Registry:
    """An open adapter registry. ``url``: a SQLite path or ``postgresql://…`` (default: see :func:`db.registry_url`).

    ``actor`` is who the audit log names (default ``$LORAKIT_USER`` or the login name).
    """

    def __init__(self, url: str | None = None, *, actor: str | None = None):
        self.url = db.registry_url(url)
        self.engine = db.connect(self.url)
        self.actor = actor or os.environ.get("LORAKIT_USER") or getpass.getuser()

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- sessions ---------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def reading(self) -> Iterator[Session]:
        """A session in one transaction (committed on success, rolled back on any error)."""
        try:
            with Session(self.engine, expire_on_commit=False) as session, session.begin():
                yield session
        except IntegrityError as err:
            raise RegistryError(
                f"registry {db.shown(self.url)} refused the change: {db.first_line(err.orig)}"
            ) from None
        except DBAPIError as err:
            raise RegistryError(f"registry {db.shown(self.url)}: {db.first_line(err.orig)}") from None

    @contextlib.contextmanager
    def writing(self) -> Iterator[Session]:
        """Like :meth:`reading`, serialised with every other writer of this registry."""
        with self.reading() as session:
            db.write_lock(session.connection(execution_options=db.WRITER_OPTIONS))
            yield session
            seal(session, session.info.pop(_PENDING, []))

    def log(self, session: Session, action: str, adapter: str | None, **details: Any) -> None:
        """Audit ``action`` on ``adapter``; written, with its snapshot and chain hash, when the write commits."""
        session.info.setdefault(_PENDING, []).append(
            AuditEntry(at=utcnow(), actor=self.actor, action=action, adapter=adapter, details=details)
        )

    # --- registration -----------------------------------------------------------------------------------

    def add(
        self,
        directory: str | Path,
        *,
        name: str | None = None,
        version: str | None = None,
        owner: str | None = None,
        description: str | None = None,
        tags: Iterable[str] = (),
    ) -> AdapterRecord:
        """Register an adapter directory as ``name@version`` (version: next integer when not given).

        Files are hashed; base, datasets, metrics and lineage come from ``lorakit.json``. A lineage parent
        that is not registered yet but whose directory still exists (same weights hash) is registered first,
        in the same transaction.
        """
        manifest = read_manifest(directory)
        name = check_name(name or default_name(manifest.path))
        if version is not None:
            check_name(version, "version")
        with self.writing() as session:
            adapter = self._insert(session, manifest, name, version, owner, description, list(tags), set())
            return adapter_record(session, adapter)

    def _insert(
        self,
        session: Session,
        manifest: Manifest,
        name: str,
        version: str | None,
        owner: str | None,
        description: str | None,
        tags: list[str],
        visiting: set[Path],
    ) -> Adapter:
        visiting.add(manifest.path)
        parents = [(info, self._parents_of(session, info, manifest, visiting)) for info in manifest.parents]
        versions = session.scalars(select(Adapter.version).where(Adapter.name == name)).all()
        if version is None:
            version = str(max((int(v) for v in versions if v.isdigit()), default=0) + 1)
        elif version in versions:
            raise RegistryError(
                f"{name}@{version} is already registered; choose another --version (or leave it out "
                "to take the next number)"
            )
        meta = manifest.meta
        now = utcnow()
        adapter = Adapter(
            name=name,
            version=version,
            path=str(manifest.path),
            size_bytes=sum(size for _, size in manifest.files.values()),
            rank=manifest.rank,
            alpha=manifest.alpha,
            targets=manifest.targets,
            task_type=manifest.task_type,
            owner=owner or _meta_text(meta, "owner") or self.actor,
            description=description or _meta_text(meta, "description"),
            status="draft",
            created_at=now,
            status_changed_at=now,
            trained_at=_meta_text(meta, "created_at"),
            lorakit_version=_meta_text(meta, "lorakit_version"),
            meta=meta,
            base=self._base(session, manifest.base) if manifest.base else None,
        )
        adapter.files = [AdapterFile(filename=f, sha256=sha, size=size) for f, (sha, size) in manifest.files.items()]
        meta_tags = (
            [t for t in meta.get("tags", []) if isinstance(t, str)] if isinstance(meta.get("tags"), list) else []
        )
        adapter.tags = [AdapterTag(tag=t) for t in sorted({check_tag(t) for t in [*tags, *meta_tags]})]
        adapter.metrics = [
            Metric(name=m.name, value=m.value, split=m.split, dataset=m.dataset) for m in manifest.metrics
        ]
        links = {(self._dataset(session, d).id, d.role) for d in manifest.datasets}
        session.add(adapter)
        session.flush()
        adapter.datasets = [AdapterDataset(dataset_id=dataset_id, role=role) for dataset_id, role in sorted(links)]
        for info, matches in parents:
            for parent in matches:
                session.add(
                    LineageEdge(
                        parent_id=parent.id,
                        child_id=adapter.id,
                        method=manifest.method,
                        weight=info.weight,
                        params=manifest.params,
                    )
                )
        self.log(
            session,
            "register",
            adapter.ref,
            path=adapter.path,
            weights_sha256=manifest.weights_sha256,
            parents=sorted({p.ref for _, matches in parents for p in matches}),
            datasets=[d.name for d in manifest.datasets],
        )
        session.flush()
        return adapter

    def _parents_of(self, session: Session, info: ParentInfo, child: Manifest, visiting: set[Path]) -> list[Adapter]:
        if info.ref is not None:
            return [lookup(session, info.ref)]
        if info.sha256 is not None:
            found = session.scalars(
                select(Adapter)
                .join(AdapterFile)
                .where(AdapterFile.filename == WEIGHTS_FILE, AdapterFile.sha256 == info.sha256)
                .order_by(Adapter.id)
            ).all()
        else:
            found = session.scalars(select(Adapter).where(Adapter.path == info.path).order_by(Adapter.id)).all()
        if found:
            return list(found)
        where = f"{child.path / 'lorakit.json'}: lineage parent {info.path or info.sha256}"
        if info.path is None or not Path(info.path).is_dir():
            raise RegistryError(f"{where} is not registered and its directory is gone; register the parent first")
        path = Path(info.path)
        if path in visiting:
            raise RegistryError(f"{where} is its own ancestor; the lineage in lorakit.json is circular")
        parent = read_manifest(path)
        if info.sha256 is not None and parent.weights_sha256 != info.sha256:
            raise RegistryError(
                f"{where} has changed since (weights sha256 {parent.weights_sha256[:12]}, lineage "
                f"says {info.sha256[:12]}); register the original parent first"
            )
        return [self._insert(session, parent, default_name(parent.path), None, None, None, [], visiting)]

    def _base(self, session: Session, info: dict[str, Any]) -> BaseModel:
        base = session.scalars(select(BaseModel).where(BaseModel.fingerprint == info["fingerprint"])).first()
        if base is None:
            base = BaseModel(created_at=utcnow(), **info)
            session.add(base)
        for key in ("name", "architecture", "parameters"):
            if getattr(base, key) is None and info[key] is not None:
                setattr(base, key, info[key])
        return base

    def _dataset(self, session: Session, info: DatasetInfo) -> Dataset:
        if info.sha256:
            where = Dataset.sha256 == info.sha256
        elif info.uri:
            where = (Dataset.uri == info.uri) & Dataset.sha256.is_(None)
        else:
            where = (Dataset.name == info.name) & Dataset.uri.is_(None) & Dataset.sha256.is_(None)
        dataset = session.scalars(select(Dataset).where(where).order_by(Dataset.id)).first()
        if dataset is None:
            dataset = Dataset(name=info.name, uri=info.uri, sha256=info.sha256, created_at=utcnow())
            session.add(dataset)
        for key in ("rows", "license", "notes"):
            if getattr(dataset, key) is None and getattr(info, key) is not None:
                setattr(dataset, key, getattr(info, key))
        session.flush()
        return dataset

    # --- lookups ----------------------------------------------------------------------------------------

    def get(self, ref: str) -> AdapterRecord:
        """``name`` (newest version not retired), ``name@version`` or ``name@production|staging|draft|latest``."""
        with self.reading() as session:
            return adapter_record(session, lookup(session, ref))

    def list(
        self, *, base: str | None = None, status: str | None = None, owner: str | None = None, tag: str | None = None
    ) -> list[AdapterRecord]:
        """Adapters matching every filter given;
        ``base`` is a base name or a fingerprint (or its first 8+ characters).
        """
        query = select(Adapter).order_by(Adapter.name, Adapter.id)
        if status is not None:
            query = query.where(Adapter.status == check_status(status))
        if owner is not None:
            query = query.where(Adapter.owner == owner)
        if tag is not None:
            query = query.where(Adapter.tags.any(AdapterTag.tag == tag))
        with self.reading() as session:
            if base is not None:
                query = query.where(Adapter.base_id.in_([b.id for b in find_bases(session, base)]))
            return [adapter_record(session, a) for a in session.scalars(query).unique()]

    def audit(self, ref: str | None = None) -> list[dict[str, Any]]:
        """The audit log, oldest first; only entries about ``ref`` when given: every version of a bare name,
        else the one version it names (``name@production`` means the version that is production now)."""
        query = select(AuditEntry).order_by(AuditEntry.id)
        with self.reading() as session:
            if ref is not None:
                name, selector = parse_ref(ref)
                if selector is None:
                    query = query.where(AuditEntry.adapter.startswith(f"{name}@", autoescape=True))
                else:
                    query = query.where(AuditEntry.adapter == lookup(session, ref, include_retired=True).ref)
            return [audit_dict(e) for e in session.scalars(query)]

    # --- governance -------------------------------------------------------------------------------------

    def promote(self, ref: str, to: str = "production", *, allow_multiple: bool = False) -> AdapterRecord:
        """Move ``ref`` to ``staging`` or ``production`` (audited); see the module docstring for the rules."""
        if to not in _PROMOTABLE:
            raise RegistryError(f"cannot promote to {to!r}: choose staging or production (use retire to retire)")
        with self.writing() as session:
            adapter = lookup(session, explicit(ref))
            if adapter.status == "retired":
                raise RegistryError(
                    f"{adapter.ref} is retired and cannot be promoted; register its directory again as a new version"
                )
            if adapter.status != to:
                if to == "production" and not allow_multiple:
                    for other in session.scalars(
                        select(Adapter).where(
                            Adapter.name == adapter.name, Adapter.id != adapter.id, Adapter.status == "production"
                        )
                    ):
                        self._set_status(session, other, "staging", "demote", replaced_by=adapter.ref)
                self._set_status(session, adapter, to, "promote", allow_multiple=allow_multiple)
            return adapter_record(session, adapter)

    def retire(self, ref: str, *, reason: str | None = None) -> AdapterRecord:
        """Retire ``ref`` (audited): it is no longer resolved for loading or serving."""
        with self.writing() as session:
            adapter = lookup(session, explicit(ref))
            if adapter.status != "retired":
                self._set_status(session, adapter, "retired", "retire", reason=reason)
            return adapter_record(session, adapter)

    def record_metrics(
        self, ref: str, metrics: dict[str, float], *, split: str | None = None, dataset: str | None = None
    ) -> AdapterRecord:
        """Append measured ``metrics`` (name → value) to ``ref`` (audited), e.g. from ``lorakit eval``."""
        with self.writing() as session:
            adapter = lookup(session, explicit(ref))
            for metric, value in metrics.items():
                session.add(
                    Metric(adapter_id=adapter.id, name=metric, value=float(value), split=split, dataset=dataset)
                )
            self.log(session, "metrics", adapter.ref, names=sorted(metrics), split=split, dataset=dataset)
            session.flush()
            session.refresh(adapter)
            return adapter_record(session, adapter)

    def _set_status(self, session: Session, adapter: Adapter, status: str, action: str, **details: Any) -> None:
        self.log(session, action, adapter.ref, **{"from": adapter.status, "to": status, **details})
        adapter.status, adapter.status_changed_at = status, utcnow()
        session.flush()

    # --- graph and checks (see graph.py and checks.py) --------------------------------------------------

    def lineage(self, ref: str) -> dict[str, Any]:
        return graph.lineage(self, ref)

    def trained_on(self, dataset: str) -> dict[str, Any]:
        return graph.trained_on(self, dataset)

    def verify(self, ref: str) -> list[dict[str, Any]]:
        return checks.verify(self, ref)

    def compatible(self, base: str) -> dict[str, Any]:
        return checks.compatible(self, base)


def _meta_text(meta: dict[str, Any], key: str) -> str | None:
    value = meta.get(key)
    return value if isinstance(value, str) and value else None
