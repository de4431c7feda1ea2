"""``lorakit registry``: register adapters with their provenance, query them, and govern their status.

Every command takes ``--registry URL`` (default ``$LORAKIT_REGISTRY``, else ``LORAKIT_HOME/registry.db``) and
``--json`` (machine-readable output on stdout).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

registry_app = typer.Typer(
    help="Adapter registry: provenance, lineage, promotion, audit (SQLite or PostgreSQL).", no_args_is_help=True
)

_URL = typer.Option(
    None,
    "--registry",
    help="SQLite path or postgresql://USER@HOST:PORT/DB (default: $LORAKIT_REGISTRY, else LORAKIT_HOME/registry.db).",
)
_JSON = typer.Option(False, "--json", help="Print JSON for scripts.")


def _open(url: str | None):
    from lorakit.registry.store import Registry

    return Registry(url)


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def _base_text(base: dict[str, Any] | None) -> str:
    if base is None:
        return "-"
    return f"{base['name'] or '?'} ({base['fingerprint'][:12]})"


def _summary_line(record) -> str:
    tags = f" [{', '.join(record.tags)}]" if record.tags else ""
    return (
        f"{record.ref:<28} {record.status:<10} {record.owner or '-':<12} r={record.rank:<4} "
        f"{_base_text(record.base)}{tags}"
    )


@registry_app.command("add")
def add(
    directory: Path = typer.Argument(
        ..., help="Adapter directory (adapter_config.json, adapter_model.safetensors, lorakit.json)."
    ),
    name: str = typer.Option(None, "--name", help="Adapter name (default: the directory's name)."),
    version: str = typer.Option(None, "--version", help="Version (default: the next integer)."),
    owner: str = typer.Option(None, "--owner", help="Owner (default: lorakit.json's owner, else you)."),
    description: str = typer.Option(None, "--description", help="What the adapter is for."),
    tag: list[str] = typer.Option([], "--tag", help="A tag; repeat for several."),
    url: str = _URL,
    as_json: bool = _JSON,
) -> None:
    """Register an adapter directory: hash its files, record base, datasets, metrics and lineage from lorakit.json."""
    with _open(url) as registry:
        record = registry.add(directory, name=name, version=version, owner=owner, description=description, tags=tag)
    if as_json:
        _print_json(record.as_dict())
        return
    parents = f", from {', '.join(p['ref'] for p in record.parents)}" if record.parents else ""
    typer.echo(
        f"registered {record.ref} ({record.status}) at {record.path}: r={record.rank} alpha={record.alpha:g} "
        f"targets={record.targets}, base {_base_text(record.base)}, {len(record.datasets)} dataset(s), "
        f"{len(record.metrics)} metric(s){parents}"
    )


@registry_app.command("list")
def list_(
    base: str = typer.Option(None, "--base", help="Base name or fingerprint (8+ leading characters)."),
    status: str = typer.Option(None, "--status", help="draft, staging, production or retired."),
    owner: str = typer.Option(None, "--owner"),
    tag: str = typer.Option(None, "--tag"),
    url: str = _URL,
    as_json: bool = _JSON,
) -> None:
    """List registered adapters, filtered by base, status, owner and tag."""
    with _open(url) as registry:
        records = registry.list(base=base, status=status, owner=owner, tag=tag)
    if as_json:
        _print_json([r.as_dict() for r in records])
        return
    for record in records:
        typer.echo(_summary_line(record))
    if not records:
        typer.echo("no adapters match")


@registry_app.command("show")
def show(
    ref: str = typer.Argument(..., help="NAME, NAME@VERSION or NAME@production|staging|draft|latest."),
    url: str = _URL,
    as_json: bool = _JSON,
) -> None:
    """Everything the registry knows about one adapter version, with its audit history."""
    with _open(url) as registry:
        record = registry.get(ref)
        history = registry.audit(record.ref)
    if as_json:
        _print_json({**record.as_dict(), "audit": history})
        return
    lines = [
        f"{record.ref}  {record.status}",
        f"  path         {record.path}",
        f"  owner        {record.owner or '-'}",
        f"  description  {record.description or '-'}",
        f"  tags         {', '.join(record.tags) or '-'}",
        f"  adapter      r={record.rank} alpha={record.alpha:g} targets={record.targets} "
        f"task={record.task_type or '-'}",
        f"  base         {_base_text(record.base)}"
        + (
            f" {record.base['architecture'] or '?'}, {record.base['parameters'] or '?'} parameters"
            if record.base
            else ""
        ),
        f"  registered   {record.created_at} (trained {record.trained_at or '?'}, "
        f"lorakit {record.lorakit_version or '?'})",
    ]
    lines += [f"  file         {name}  {f['size']} B  sha256 {f['sha256'][:16]}" for name, f in record.files.items()]
    lines += [
        f"  dataset      {d['name']} ({d['role']}) {d['uri'] or ''} sha256 {(d['sha256'] or '?')[:16]} "
        f"rows {d['rows'] or '?'} "
        f"license {d['license'] or '?'}"
        for d in record.datasets
    ]
    lines += [
        f"  metric       {m['name']} = {m['value']:g}" + (f" ({m['split']})" if m["split"] else "")
        for m in record.metrics
    ]
    lines += [
        f"  parent       {p['ref']} by {p['method'] or '?'}"
        + (f" weight {p['weight']:g}" if p["weight"] is not None else "")
        for p in record.parents
    ]
    lines += [f"  audit        {e['at']} {e['actor']} {e['action']} {_details(e['details'])}" for e in history]
    typer.echo("\n".join(lines))


def _details(details: dict[str, Any]) -> str:
    if "from" in details:
        return f"{details['from']} → {details['to']}"
    if "ok" in details:
        return "ok" if details["ok"] else "; ".join(details.get("problems", []))
    return ""


@registry_app.command("lineage")
def lineage(
    ref: str = typer.Argument(..., help="NAME or NAME@VERSION."), url: str = _URL, as_json: bool = _JSON
) -> None:
    """The tree of adapters (and datasets) an adapter was made from, and what was made from it."""
    with _open(url) as registry:
        graph = registry.lineage(ref)
    if as_json:
        _print_json(graph)
        return
    lines: list[str] = []
    _tree(graph["tree"], "", "", lines)
    if graph["descendants"]:
        lines.append(
            "made from it: "
            + ", ".join(f"{d['ref']} ({d['method'] or '?'} of {d['parent']})" for d in graph["descendants"])
        )
    typer.echo("\n".join(lines))


def _tree(node: dict[str, Any], lead: str, child_lead: str, lines: list[str]) -> None:
    """Append ``node`` and its ancestors as an indented tree; each line says how the child was made from it."""
    how = ""
    if "method" in node:  # every node but the root hangs from an edge
        how = f"  ← {node['method'] or '?'}" + (f" weight {node['weight']:g}" if node["weight"] is not None else "")
    data = "".join(
        f"  data: {d['name']} ({(d['sha256'] or '?')[:12]})" for d in node["datasets"] if d.get("role") == "train"
    )
    lines.append(f"{lead}{node['ref']} [{node['status']}]{how}{data}")
    for i, parent in enumerate(node["parents"]):
        last = i == len(node["parents"]) - 1
        _tree(parent, child_lead + ("└─ " if last else "├─ "), child_lead + ("   " if last else "│  "), lines)


@registry_app.command("trained-on")
def trained_on(
    dataset: str = typer.Argument(..., help="Dataset name, path/uri or sha256 (8+ leading hex characters)."),
    url: str = _URL,
    as_json: bool = _JSON,
) -> None:
    """Every adapter whose lineage reaches DATASET: trained on it, or made from one that was."""
    with _open(url) as registry:
        found = registry.trained_on(dataset)
    if as_json:
        _print_json(found)
        return
    names = ", ".join(f"{d['name']} ({(d['sha256'] or d['uri'] or '?')[:16]})" for d in found["datasets"])
    typer.echo(f"dataset {names}: {len(found['adapters'])} adapter(s)")
    for item in found["adapters"]:
        via = f"  via {' → '.join(item['via'])}" if item["via"] else "  trained on it"
        typer.echo(f"  {item['ref']:<28} {item['status']:<10}{via}")


@registry_app.command("promote")
def promote(
    ref: str = typer.Argument(..., help="NAME@VERSION (or NAME@staging)."),
    to: str = typer.Option("production", "--to", help="staging or production."),
    allow_multiple: bool = typer.Option(False, "--allow-multiple", help="Keep other production versions live."),
    url: str = _URL,
    as_json: bool = _JSON,
) -> None:
    """Promote a version (audited). One production version per name: the previous one goes back to staging."""
    with _open(url) as registry:
        record = registry.promote(ref, to, allow_multiple=allow_multiple)
    if as_json:
        _print_json(record.as_dict())
    else:
        typer.echo(f"{record.ref} is {record.status}")


@registry_app.command("retire")
def retire(
    ref: str = typer.Argument(..., help="NAME@VERSION."),
    reason: str = typer.Option(None, "--reason"),
    url: str = _URL,
    as_json: bool = _JSON,
) -> None:
    """Retire a version (audited): it is no longer resolved for loading or serving."""
    with _open(url) as registry:
        record = registry.retire(ref, reason=reason)
    if as_json:
        _print_json(record.as_dict())
    else:
        typer.echo(f"{record.ref} is retired")


@registry_app.command("verify")
def verify(
    ref: str = typer.Argument(..., help="NAME (every version) or NAME@VERSION."), url: str = _URL, as_json: bool = _JSON
) -> None:
    """Re-hash an adapter's files, compare its registry row with its last audited change and check the audit hash
    chain end to end; print what changed and where the chain breaks; exit code 1 on any finding."""
    from lorakit.registry.checks import describe

    with _open(url) as registry:
        reports = registry.verify(ref)
    if as_json:
        _print_json(reports)
    else:
        for report in reports:
            state = "ok" if report["ok"] else "FAILED: " + "; ".join(describe(p) for p in report["problems"])
            typer.echo(f"{report['ref']:<28} {state}")
        if reports:
            typer.echo(
                f"audit chain: {reports[0]['audit_entries']} entries, head {reports[0]['chain_head'][:16]} "
                "(record it elsewhere to detect a rebuilt log)"
            )
    if not all(report["ok"] for report in reports):
        raise typer.Exit(1)


@registry_app.command("compatible")
def compatible(
    base: str = typer.Argument(..., help="Base name, fingerprint (8+ characters) or a model directory."),
    url: str = _URL,
    as_json: bool = _JSON,
) -> None:
    """Adapters registered for a base model (same fingerprint)."""
    with _open(url) as registry:
        found = registry.compatible(base)
    if as_json:
        _print_json({**found, "adapters": [r.as_dict() for r in found["adapters"]]})
        return
    typer.echo(
        f"base {', '.join(_base_text(b) for b in found['bases']) or found['fingerprint']}: "
        f"{len(found['adapters'])} adapter(s)"
    )
    for record in found["adapters"]:
        typer.echo("  " + _summary_line(record))


@registry_app.command("audit")
def audit(
    ref: str = typer.Argument(None, help="NAME or NAME@VERSION (default: everything)."),
    url: str = _URL,
    as_json: bool = _JSON,
) -> None:
    """The append-only audit log: who registered, promoted, retired or verified what, and when."""
    with _open(url) as registry:
        entries = registry.audit(ref)
    if as_json:
        _print_json(entries)
        return
    for entry in entries:
        typer.echo(
            f"{entry['at']}  {entry['actor']:<12} {entry['action']:<9} {entry['adapter'] or '-':<28} "
            f"{_details(entry['details'])}"
        )
