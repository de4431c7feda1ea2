"""Walk the lineage graph: where an adapter came from, and every adapter a dataset reached.

Edges run parent → child (combine, compress, merge, continued training). ``trained_on(D)`` starts from the
adapters linked to dataset ``D`` as training data and follows edges to every descendant, so an adapter combined
from one trained on ``D`` is found too, however many generations later.
"""

from __future__ import annotations

from collections import defaultdict, deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from lorakit.core.errors import RegistryError
from lorakit.registry.records import dataset_dict
from lorakit.registry.refs import lookup
from lorakit.registry.schema import Adapter, AdapterDataset, Dataset, LineageEdge

if TYPE_CHECKING:
    from lorakit.registry.store import Registry


def _edges(session: Session) -> list[LineageEdge]:
    return list(session.scalars(select(LineageEdge).order_by(LineageEdge.id)))


def _summary(adapter: Adapter) -> dict[str, Any]:
    return {
        "ref": adapter.ref,
        "status": adapter.status,
        "path": adapter.path,
        "datasets": [dataset_dict(link.dataset, link.role) for link in adapter.datasets],
    }


def lineage(registry: Registry, ref: str) -> dict[str, Any]:
    """``{"tree": ancestors of ref, nested through "parents", "descendants": [...]}``."""
    with registry.reading() as session:
        root = lookup(session, ref, include_retired=True)
        edges = _edges(session)
        parents, children = defaultdict(list), defaultdict(list)
        for edge in edges:
            parents[edge.child_id].append(edge)
            children[edge.parent_id].append(edge)

        def ancestors(adapter: Adapter, edge: LineageEdge | None, seen: frozenset[int]) -> dict[str, Any]:
            node = _summary(adapter)
            if edge is not None:
                node.update(method=edge.method, weight=edge.weight, params=edge.params)
            node["parents"] = [
                ancestors(session.get(Adapter, e.parent_id), e, seen | {adapter.id})
                for e in parents[adapter.id]
                if e.parent_id not in seen
            ]
            return node

        descendants, queue, seen = [], deque([root.id]), {root.id}
        while queue:
            for edge in children[queue.popleft()]:
                if edge.child_id not in seen:
                    seen.add(edge.child_id)
                    queue.append(edge.child_id)
                    child = session.get(Adapter, edge.child_id)
                    descendants.append(
                        {
                            "ref": child.ref,
                            "status": child.status,
                            "parent": session.get(Adapter, edge.parent_id).ref,
                            "method": edge.method,
                        }
                    )
        return {"adapter": root.ref, "tree": ancestors(root, None, frozenset()), "descendants": descendants}


def find_datasets(session: Session, query: str) -> list[Dataset]:
    """Datasets named ``query``, at uri/path ``query``, or whose sha256 is or starts with it (8+ hex characters)."""
    conditions = [Dataset.name == query, Dataset.uri == query, Dataset.sha256 == query.lower()]
    if len(query) >= 8 and all(c in "0123456789abcdefABCDEF" for c in query):
        conditions.append(Dataset.sha256.startswith(query.lower()))
    if Path(query).expanduser().exists():
        conditions.append(Dataset.uri == str(Path(query).expanduser().resolve()))
    return list(session.scalars(select(Dataset).where(or_(*conditions)).order_by(Dataset.id)))


def trained_on(registry: Registry, dataset: str) -> dict[str, Any]:
    """``{"datasets": [...matched], "adapters": [{ref, status, path, via: [refs from the trained one]}...]}``."""
    with registry.reading() as session:
        matched = find_datasets(session, dataset)
        if not matched:
            raise RegistryError(
                f"no dataset {dataset!r} in the registry (looked at names, paths and sha256); "
                "datasets are recorded from lorakit.json when adapters are registered"
            )
        direct = session.scalars(
            select(AdapterDataset.adapter_id).where(
                AdapterDataset.dataset_id.in_([d.id for d in matched]), AdapterDataset.role == "train"
            )
        ).all()
        children = defaultdict(list)
        for edge in _edges(session):
            children[edge.parent_id].append(edge.child_id)
        via: dict[int, list[int]] = {}
        queue = deque()
        for adapter_id in sorted(set(direct)):
            via[adapter_id] = []
            queue.append(adapter_id)
        while queue:
            current = queue.popleft()
            for child in children[current]:
                if child not in via:
                    via[child] = [*via[current], current]
                    queue.append(child)
        found = []
        for adapter_id, chain in via.items():
            adapter = session.get(Adapter, adapter_id)
            found.append(
                {
                    "ref": adapter.ref,
                    "status": adapter.status,
                    "path": adapter.path,
                    "via": [session.get(Adapter, i).ref for i in chain],
                }
            )
        found.sort(key=lambda item: (len(item["via"]), item["ref"]))
        return {"datasets": [dataset_dict(d) for d in matched], "adapters": found}
