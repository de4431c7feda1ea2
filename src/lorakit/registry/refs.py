"""Names and references of registered adapters: ``name``, ``name@version``, ``name@<status|latest>``, and the
queries that turn one into a row. Shared by the store and its graph and checks modules."""

from __future__ import annotations

import re

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from lorakit.core.errors import RegistryError
from lorakit.registry.records import iso
from lorakit.registry.schema import STATUSES, Adapter, BaseModel

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SELECTORS = (*STATUSES, "latest")


def check_name(value: str, what: str = "name") -> str:
    if not _NAME.fullmatch(value) or (what == "version" and value in _SELECTORS):
        reserved = f" and not one of {', '.join(_SELECTORS)}" if what == "version" else ""
        raise RegistryError(
            f"invalid adapter {what} {value!r}: use letters, digits, '.', '_' or '-' "
            f"(at most 128, starting with a letter or digit){reserved}"
        )
    return value


def parse_ref(ref: str) -> tuple[str, str | None]:
    """``name``, ``name@version`` or ``name@<status|latest>`` → ``(name, selector or None)``."""
    name, sep, selector = ref.strip().partition("@")
    check_name(name)
    if sep and not selector:
        raise RegistryError(f"{ref!r}: nothing after '@'; write NAME@VERSION, NAME@production or NAME")
    return name, selector or None


def check_tag(tag: str) -> str:
    if not tag.strip() or len(tag) > 128:
        raise RegistryError(f"invalid tag {tag!r}: a tag is 1 to 128 characters")
    return tag.strip()


def check_status(status: str) -> str:
    if status not in STATUSES:
        raise RegistryError(f"unknown status {status!r}: choose one of {', '.join(STATUSES)}")
    return status


def explicit(ref: str) -> str:
    """``ref`` if it names a version or status: governance never acts on a bare name's newest version by guess."""
    if "@" not in ref:
        raise RegistryError(f"{ref!r}: say which version, e.g. {ref}@1 or {ref}@staging")
    return ref


def lookup(session: Session, ref: str, *, include_retired: bool = False) -> Adapter:
    """The adapter row ``ref`` names, or a :class:`RegistryError` saying what the registry holds instead."""
    name, selector = parse_ref(ref)
    rows = session.scalars(select(Adapter).where(Adapter.name == name).order_by(Adapter.id)).all()
    if not rows:
        raise RegistryError(
            f"no adapter named {name!r} in the registry; `lorakit registry list` shows what is registered"
        )
    listing = ", ".join(f"{a.ref} ({a.status})" for a in rows[-6:])
    if selector in STATUSES:
        matching = [a for a in rows if a.status == selector]
        if not matching:
            raise RegistryError(
                f"{name} has no {selector} version (it has {listing}); "
                f"promote one with `lorakit registry promote {name}@VERSION --to {selector}`"
            )
        return max(matching, key=lambda a: (_stamp(a), a.id))
    if selector in (None, "latest"):
        live = [a for a in rows if a.status != "retired" or include_retired]
        if not live:
            raise RegistryError(f"every version of {name} is retired ({listing}); name one explicitly")
        return live[-1]
    for adapter in rows:
        if adapter.version == selector:
            return adapter
    raise RegistryError(f"{name} has no version {selector!r} (it has {listing})")


def _stamp(adapter: Adapter) -> str:
    return iso(adapter.status_changed_at) or ""


def find_bases(session: Session, base: str) -> list[BaseModel]:
    """Registered bases whose name is ``base`` or whose fingerprint is or starts with it (8+ characters)."""
    conditions = [BaseModel.name == base, BaseModel.fingerprint == base]
    if len(base) >= 8:
        conditions.append(BaseModel.fingerprint.startswith(base.lower(), autoescape=True))
    found = session.scalars(select(BaseModel).where(or_(*conditions)).order_by(BaseModel.id)).all()
    return list(found)
