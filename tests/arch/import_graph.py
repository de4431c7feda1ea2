"""lorakit's import graph read from the source with ``ast``: every import, at module level or inside a function,
except those under ``if TYPE_CHECKING:``. Importing ``a.b.c`` also depends on the packages ``a.b`` and ``a``."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"

# ARCHITECTURE.md's layers, bottom first: a module may import its own layer and those below it
LAYERS = ["core", "data", "algebra", "registry", "eval", "train", "sweep", "serve", "cli"]


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module under ``src/lorakit``."""
    found = {}
    for path in (SRC / "lorakit").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imported_names(path: Path, known: dict[str, Path]) -> set[str]:
    names: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            test = node.test
            if getattr(test, "id", None) == "TYPE_CHECKING" or getattr(test, "attr", None) == "TYPE_CHECKING":
                for child in node.orelse:
                    self.visit(child)
                return
            self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            names.update(alias.name for alias in node.names)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.level or not node.module:
                return
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                names.add(full if full in known else node.module)

    Visitor().visit(ast.parse(path.read_text(encoding="utf-8")))
    return names


def graph() -> dict[str, set[str]]:
    """Module -> the lorakit modules (and their parent packages) it imports."""
    known = modules()
    edges: dict[str, set[str]] = {}
    for name, path in known.items():
        targets: set[str] = set()
        for imported in _imported_names(path, known):
            while imported and imported not in known:
                imported = imported.rpartition(".")[0]
            while imported.startswith("lorakit"):
                if imported != name and not name.startswith(imported + "."):
                    targets.add(imported)
                imported = imported.rpartition(".")[0]
        edges[name] = targets
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in edges:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def layer_of(module: str) -> str | None:
    """The ARCHITECTURE.md layer of ``lorakit.<layer>…``, or None for the facade and its helpers."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None
