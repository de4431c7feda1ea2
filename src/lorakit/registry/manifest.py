"""What the registry records from an adapter directory: file hashes, a rank/targets summary, and the provenance
fields of ``lorakit.json`` (base, datasets, metrics, lineage), read defensively.

The fields consumed from ``lorakit.json`` (all optional; anything else is kept verbatim in ``meta``):

- ``base: {name_or_path, fingerprint, architecture, parameters}``
- ``dataset: {name, path | uri, sha256, rows, license, notes, role}`` — or ``datasets: [...]`` of the same, or
  the trainer's ``training: {dataset: {train: {...}, eval: {...}}}``
- ``metrics``: ``{name: value}``, ``{split: {name: value}}`` or ``[{name, value, split, dataset}]``; also the
  trainer's ``training: {metrics: {...}}``
- ``lineage: {method, params, parents: [{registry: "name@version" | path, sha256, weight}]}`` where ``sha256``
  is the hash of the parent's ``adapter_model.safetensors`` and a relative ``path`` is relative to the adapter
- ``created_at``, ``lorakit_version``, ``owner``, ``description``, ``tags: [str]``
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from lorakit.core.bases import DEFAULT_BASE, default_cache_dir
from lorakit.core.errors import AdapterFileError
from lorakit.core.files import read_adapter
from lorakit.core.files.peft_format import CONFIG_FILE, WEIGHTS_FILE

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def hash_files(directory: Path) -> dict[str, tuple[str, int]]:
    """``relative posix path -> (sha256, size)`` of every file under ``directory`` (hidden files skipped)."""
    found = {}
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            found[relative.as_posix()] = (sha256_file(path), path.stat().st_size)
    return found


@dataclass
class DatasetInfo:
    name: str
    uri: str | None = None
    sha256: str | None = None
    rows: int | None = None
    license: str | None = None
    notes: str | None = None
    role: str = "train"


@dataclass
class MetricInfo:
    name: str
    value: float
    split: str | None = None
    dataset: str | None = None


@dataclass
class ParentInfo:
    """One parent named in ``lineage.parents``: a registry reference, or a path and/or weights hash."""

    ref: str | None
    path: str | None
    sha256: str | None
    weight: float | None


@dataclass
class Manifest:
    path: Path
    files: dict[str, tuple[str, int]]
    rank: int
    alpha: float
    targets: str
    task_type: str | None
    meta: dict[str, Any]
    base: dict[str, Any] | None
    datasets: list[DatasetInfo] = field(default_factory=list)
    metrics: list[MetricInfo] = field(default_factory=list)
    parents: list[ParentInfo] = field(default_factory=list)
    method: str | None = None
    params: dict[str, Any] | None = None

    @property
    def weights_sha256(self) -> str:
        return self.files[WEIGHTS_FILE][0]


def read_manifest(directory: str | Path) -> Manifest:
    """Validate ``directory`` as an adapter (the same checks as loading) and gather what the registry records."""
    path = Path(directory).expanduser().resolve()
    if not (path / CONFIG_FILE).exists() and (path / "adapter" / CONFIG_FILE).exists():
        raise AdapterFileError(
            f"{path}: no {CONFIG_FILE} here; it looks like a training run: register {path / 'adapter'}"
        )
    files = read_adapter(path)
    config, meta = files.config, files.meta
    targets = config.targets if isinstance(config.targets, str) else ",".join(sorted(config.targets))
    lineage = _dict(meta.get("lineage"))
    return Manifest(
        path=path,
        files=hash_files(path),
        rank=config.r,
        alpha=float(config.alpha),
        targets=targets,
        task_type=config.task_type,
        meta=meta,
        base=_base(meta, files.raw_config),
        datasets=_datasets(meta, path),
        metrics=_metrics(meta.get("metrics")) + _metrics(_dict(meta.get("training")).get("metrics")),
        parents=[_parent(p, path) for p in lineage.get("parents") or []],
        method=_text(lineage.get("method")),
        params=_dict(lineage.get("params")) or None,
    )


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)) or value == "":
        return None
    return str(value)


def _int(value: Any) -> int | None:
    return (
        int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None
    )


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _base(meta: dict[str, Any], raw_config: dict[str, Any]) -> dict[str, Any] | None:
    base = _dict(meta.get("base"))
    fingerprint = _text(base.get("fingerprint"))
    if fingerprint is None:
        return None
    name = _text(base.get("name_or_path")) or _text(raw_config.get("base_model_name_or_path"))
    parameters = _int(base.get("parameters"))
    return {
        "fingerprint": fingerprint,
        "name": name,
        "architecture": _text(base.get("architecture")),
        "parameters": parameters if parameters is not None else count_parameters(name),
    }


def count_parameters(base_name: str | None) -> int | None:
    """Parameters of a base whose safetensors are on this machine (the cached default or a local directory),
    counted from the file headers without loading a tensor; ``None`` when the base is not here."""
    if base_name is None:
        return None
    directory = default_cache_dir() if base_name == DEFAULT_BASE else Path(base_name).expanduser()
    shards = sorted(directory.glob("*.safetensors")) if directory.is_dir() else []
    if not shards:
        return None
    total = 0
    try:
        for shard in shards:
            with safe_open(str(shard), framework="pt") as handle:
                total += sum(math.prod(handle.get_slice(key).get_shape()) for key in handle.keys())
    except (SafetensorError, OSError):
        return None
    return total


def _dataset_entries(meta: dict[str, Any]) -> list[tuple[Any, str | None]]:
    """``(entry, role)`` from ``datasets``/``dataset`` and from the trainer's ``training.dataset.{train,eval}``."""
    entries = meta.get("datasets") if isinstance(meta.get("datasets"), list) else [meta.get("dataset")]
    found = [(entry, None) for entry in entries]
    by_role = _dict(_dict(meta.get("training")).get("dataset"))
    found += [(entry, role) for role, entry in by_role.items() if role in ("train", "eval")]
    return found


def _datasets(meta: dict[str, Any], where: Path) -> list[DatasetInfo]:
    found = []
    for entry, role in _dataset_entries(meta):
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, dict):
            continue
        uri = _text(entry.get("uri")) or _text(entry.get("path"))
        sha = _text(entry.get("sha256"))
        name = _text(entry.get("name")) or (Path(uri).name if uri else None) or (sha[:12] if sha else None)
        if name is None:
            raise AdapterFileError(f"{where / 'lorakit.json'}: a dataset entry has none of name, path, uri, sha256")
        found.append(
            DatasetInfo(
                name,
                uri,
                sha.lower() if sha else None,
                _int(entry.get("rows")),
                _text(entry.get("license")),
                _text(entry.get("notes")),
                role or _text(entry.get("role")) or "train",
            )
        )
    return found


def _metrics(value: Any) -> list[MetricInfo]:
    found = []
    if isinstance(value, list):
        for item in value:
            item = _dict(item)
            number = _number(item.get("value"))
            if _text(item.get("name")) and number is not None:
                found.append(
                    MetricInfo(str(item["name"]), number, _text(item.get("split")), _text(item.get("dataset")))
                )
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, dict):
                found += [
                    MetricInfo(str(name), number, str(key))
                    for name, inner in item.items()
                    if (number := _number(inner)) is not None
                ]
            elif (number := _number(item)) is not None:
                found.append(MetricInfo(str(key), number))
    return found


def _parent(entry: Any, where: Path) -> ParentInfo:
    if isinstance(entry, str):
        entry = {"path": entry}
    entry = _dict(entry)
    path = _text(entry.get("path"))
    if path is not None:
        path = str((where / Path(path).expanduser()).resolve())  # relative paths are relative to the adapter directory
    sha = _text(entry.get("sha256"))
    parent = ParentInfo(_text(entry.get("registry")), path, sha.lower() if sha else None, _number(entry.get("weight")))
    if parent.ref is None and parent.path is None and parent.sha256 is None:
        raise AdapterFileError(
            f"{where / 'lorakit.json'}: a lineage parent has none of registry, path, sha256; it cannot be traced"
        )
    return parent
