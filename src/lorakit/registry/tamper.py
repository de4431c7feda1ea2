"""Tamper evidence: a hash chain over the audit log, and a snapshot of each adapter's row in the entry that
changed it.

Every audit entry stores ``entry_hash = sha256(prev_hash ‖ canonical JSON of the entry)``, where the entry is
its time, actor, action, adapter, details and — for every action that changes an adapter (register, promote,
demote, retire, metrics, …) — ``state``: the adapter's registered row as it stood after the change (status, rank,
alpha, targets, file hashes, metrics, tags, base fingerprint, datasets, lineage, meta). :func:`check_chain`
recomputes the chain end to end, so an altered entry fails its own hash and a deleted one breaks the link of
the next; :func:`check_state` compares each adapter's row now with its last snapshot, so an edit of the row
itself (a metric value, a status, a rank, a file hash) shows as the fields that changed.

Someone who can write the database can still rebuild the whole chain from the start, or drop the newest
entries that changed nothing; the chain head (:func:`chain_head`, printed by ``lorakit registry verify``)
recorded elsewhere closes that gap. Method: a hash chain as in append-only logs (Haber & Stornetta, 1991).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from lorakit.registry.records import adapter_record, iso
from lorakit.registry.schema import Adapter, AuditEntry

UNCHANGING_ACTIONS = frozenset({"verify"})
"""Audit actions that change no adapter row and so carry no state snapshot."""
GENESIS = ""
"""``prev_hash`` of the first entry."""


def canonical(value: Any) -> str:
    """Deterministic JSON text (sorted keys, no spaces) — the bytes that are hashed."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def adapter_state(session: Session, adapter: Adapter) -> dict[str, Any]:
    """What an adapter's registered row says, as plain JSON values (the fields other writes may fill in — a
    base's name, a dataset's row count — are left out; their identities are kept)."""
    record = adapter_record(session, adapter).as_dict()
    record["base"] = None if record["base"] is None else {"fingerprint": record["base"]["fingerprint"]}
    record["datasets"] = [{k: d.get(k) for k in ("name", "uri", "sha256", "role")} for d in record["datasets"]]
    return json.loads(canonical(record))


def entry_hash(prev_hash: str, entry: AuditEntry) -> str:
    """sha256 (hex) of ``prev_hash`` and the entry's content."""
    content = {
        "at": iso(entry.at),
        "actor": entry.actor,
        "action": entry.action,
        "adapter": entry.adapter,
        "details": entry.details or {},
        "state": entry.state,
    }
    return hashlib.sha256((prev_hash + "\n" + canonical(content)).encode("utf-8")).hexdigest()


def chain_head(session: Session) -> tuple[str, int]:
    """``(hash of the newest entry, number of entries)``; ``(GENESIS, 0)`` for an empty log."""
    newest = session.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(1)).first()
    count = session.query(AuditEntry).count()
    return (newest.entry_hash or GENESIS if newest is not None else GENESIS), count


def seal(session: Session, entries: list[AuditEntry]) -> None:
    """Give ``entries`` (new, not yet added) their state snapshots and chain hashes, then add them.

    Call with the writer's lock held, after the transaction's other changes, so the snapshots show the result.
    """
    if not entries:
        return
    session.flush()
    session.expire_all()
    prev, _ = chain_head(session)
    for entry in entries:
        if entry.action not in UNCHANGING_ACTIONS and entry.adapter:
            adapter = _by_ref(session, entry.adapter)
            entry.state = adapter_state(session, adapter) if adapter is not None else None
        entry.prev_hash = prev
        entry.entry_hash = prev = entry_hash(prev, entry)
        session.add(entry)
    session.flush()


def check_chain(session: Session) -> list[str]:
    """Every break of the audit chain, oldest first (empty when the log is intact end to end)."""
    problems = []
    expected = GENESIS
    for entry in session.scalars(select(AuditEntry).order_by(AuditEntry.id)):
        label = f"audit entry #{entry.id} ({entry.action} {entry.adapter or '-'} at {iso(entry.at)})"
        if entry.entry_hash is None:
            problems.append(f"{label} has no hash: it was written outside lorakit")
            continue
        if entry.prev_hash != expected:
            problems.append(f"audit chain breaks before {label}: an earlier entry was deleted or altered")
        if entry_hash(entry.prev_hash or GENESIS, entry) != entry.entry_hash:
            problems.append(f"{label} was altered after it was written")
        expected = entry.entry_hash
    return problems


def check_state(session: Session, adapter: Adapter) -> list[str]:
    """The fields of ``adapter``'s row that differ from its last audited snapshot (``field: was → now``)."""
    last = session.scalars(
        select(AuditEntry)
        .where(AuditEntry.adapter == adapter.ref, AuditEntry.state.isnot(None))
        .order_by(AuditEntry.id.desc())
        .limit(1)
    ).first()
    if last is None:
        return [
            f"{adapter.ref}: no audited change records this row (its audit entries were deleted, or the row "
            "was inserted outside lorakit)"
        ]
    return [
        f"{adapter.ref}: {change} since audit entry #{last.id} ({last.action})"
        for change in _differences(last.state, adapter_state(session, adapter))
    ]


def _differences(was: Any, now: Any, path: str = "") -> list[str]:
    if isinstance(was, dict) and isinstance(now, dict):
        return [
            change
            for key in sorted(set(was) | set(now))
            for change in _differences(was.get(key), now.get(key), f"{path}.{key}" if path else key)
        ]
    if isinstance(was, list) and isinstance(now, list) and len(was) == len(now):
        return [change for i, (a, b) in enumerate(zip(was, now)) for change in _differences(a, b, f"{path}[{i}]")]
    if was != now:
        return [f"{path or 'row'} changed from {_short(was)} to {_short(now)}"]
    return []


def _short(value: Any) -> str:
    text = canonical(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _by_ref(session: Session, ref: str) -> Adapter | None:
    name, _, version = ref.partition("@")
    return session.scalars(select(Adapter).where(Adapter.name == name, Adapter.version == version)).first()
