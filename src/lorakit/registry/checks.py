"""Integrity and compatibility: re-hash an adapter's files, check its row and the audit chain (tamper evidence,
see :mod:`lorakit.registry.tamper`), and find the adapters that fit a base."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from lorakit.core.errors import RegistryError
from lorakit.registry.manifest import hash_files
from lorakit.registry.records import AdapterRecord, adapter_record
from lorakit.registry.refs import find_bases, lookup, parse_ref
from lorakit.registry.schema import Adapter
from lorakit.registry.tamper import chain_head, check_chain, check_state

if TYPE_CHECKING:
    from lorakit.registry.store import Registry


def file_problems(record: AdapterRecord) -> list[dict[str, Any]]:
    """Each file that is ``missing``, ``modified`` (other sha256) or ``added`` since registration; empty when intact."""
    path = Path(record.path)
    if not path.is_dir():
        return [
            {"file": name, "status": "missing", "expected": f["sha256"], "actual": None}
            for name, f in record.files.items()
        ]
    now = hash_files(path)
    problems = []
    for name, registered in record.files.items():
        if name not in now:
            problems.append({"file": name, "status": "missing", "expected": registered["sha256"], "actual": None})
        elif now[name][0] != registered["sha256"]:
            problems.append(
                {"file": name, "status": "modified", "expected": registered["sha256"], "actual": now[name][0]}
            )
    problems += [
        {"file": name, "status": "added", "expected": None, "actual": sha}
        for name, (sha, _) in now.items()
        if name not in record.files
    ]
    return problems


def describe(problem: dict[str, Any]) -> str:
    if "detail" in problem:
        return problem["detail"]
    if problem["status"] == "modified":
        return f"{problem['file']} modified (sha256 {problem['actual'][:12]}, registered {problem['expected'][:12]})"
    return f"{problem['file']} {problem['status']}"


def verify(registry: Registry, ref: str) -> list[dict[str, Any]]:
    """Check ``ref`` (every version when ``ref`` is a bare name); one report per version, audited.

    A report's ``problems`` are its files (``missing``/``modified``/``added``), the fields of its registry row
    that changed since the last audited change (``status: "row"``), and every break of the audit chain
    (``status: "audit"``, the same in each report). ``chain_head`` is the newest entry's hash before this check.
    """
    name, selector = parse_ref(ref)
    with registry.reading() as session:
        if selector is None:
            adapters = list(session.scalars(select(Adapter).where(Adapter.name == name).order_by(Adapter.id)))
            if not adapters:
                lookup(session, name)
        else:
            adapters = [lookup(session, ref)]
        records = [adapter_record(session, a) for a in adapters]
        rows = {a.ref: [{"status": "row", "detail": d} for d in check_state(session, a)] for a in adapters}
        chain = [{"status": "audit", "detail": d} for d in check_chain(session)]
        head, entries = chain_head(session)
    reports = []
    for record in records:
        problems = [*file_problems(record), *rows[record.ref], *chain]
        reports.append(
            {
                "ref": record.ref,
                "path": record.path,
                "ok": not problems,
                "problems": problems,
                "chain_head": head,
                "audit_entries": entries,
            }
        )
    with registry.writing() as session:
        for report in reports:
            registry.log(
                session, "verify", report["ref"], ok=report["ok"], problems=[describe(p) for p in report["problems"]]
            )
    return reports


def compatible(registry: Registry, base: str) -> dict[str, Any]:
    """Adapters registered for ``base``: a base name, a fingerprint (or 8+ leading characters), or a model
    directory / the default model's name, which is loaded and fingerprinted when nothing registered matches."""
    with registry.reading() as session:
        bases = find_bases(session, base)
    fingerprint = None
    if not bases:
        fingerprint = _fingerprint_of(base)
        with registry.reading() as session:
            bases = find_bases(session, fingerprint)
    with registry.reading() as session:
        ids = [b.id for b in bases]
        adapters = session.scalars(
            select(Adapter).where(Adapter.base_id.in_(ids)).order_by(Adapter.name, Adapter.id)
        ).unique()
        records = [adapter_record(session, a) for a in adapters]
        return {
            "bases": [
                {
                    "name": b.name,
                    "fingerprint": b.fingerprint,
                    "architecture": b.architecture,
                    "parameters": b.parameters,
                }
                for b in bases
            ],
            "fingerprint": fingerprint,
            "adapters": records,
        }


def _fingerprint_of(base: str) -> str:
    from lorakit.core import bases
    from lorakit.core.errors import ModelLoadError

    local = Path(base).expanduser()
    if base != bases.DEFAULT_BASE and not (local / "config.json").exists():
        raise RegistryError(
            f"no registered base matches {base!r} (by name or fingerprint), and it is not a model "
            "directory; `lorakit registry list` shows the bases adapters were registered for"
        )
    try:
        model, _ = bases.load(base)
    except ModelLoadError as err:
        raise RegistryError(f"{base}: cannot fingerprint it: {err}") from None
    return bases.fingerprint(model)
