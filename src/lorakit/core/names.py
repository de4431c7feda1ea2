"""Key names as people type them: other tools' names accepted as aliases, unknown names answered with
"did you mean". Used by :class:`~lorakit.core.config.LoraConfig` and the YAML run config."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any

from lorakit.core.errors import ConfigError


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices`` to ``word``, or ``""`` when none is close."""
    choices = list(choices)
    match = difflib.get_close_matches(str(word), choices, n=1, cutoff=0.6)
    if not match:
        match = sorted((c for c in choices if str(word).startswith(c) or c.startswith(str(word))), key=len)[:1]
    return f" (did you mean {match[0]!r}?)" if match else ""


def rename_aliases(values: Mapping[str, Any], aliases: Mapping[str, str], prefix: str = "") -> dict[str, Any]:
    """``values`` with each alias key renamed to its lorakit name (``lora_alpha`` → ``alpha``).

    ``prefix`` (``"lora."``) is put before key names in errors.

    Raises:
        ConfigError: a key is given both under its lorakit name and an alias (or under two aliases).
    """
    out: dict[str, Any] = {}
    given_as: dict[str, str] = {}
    for key, value in values.items():
        name = aliases.get(key, key)
        if name in out:
            raise ConfigError(
                f"{prefix}{given_as[name]} and {prefix}{key} are the same setting ({prefix}{name}); give it once"
            )
        out[name], given_as[name] = value, key
    return out


def unknown_keys(keys: Iterable[str], valid: Iterable[str], prefix: str = "") -> str | None:
    """One message naming every key not in ``valid`` (each with its closest valid name), or ``None``."""
    valid = sorted(valid)
    unknown = [k for k in keys if k not in valid]
    if not unknown:
        return None
    named = ", ".join(f"{prefix}{k}{did_you_mean(k, valid)}" for k in unknown)
    return (
        f"unknown key{'s' if len(unknown) > 1 else ''} {named}; "
        f"valid keys{' in ' + prefix.rstrip('.') if prefix else ''}: "
        f"{', '.join(valid)}"
    )
