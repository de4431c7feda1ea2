"""Which adapter names are safe: a name becomes a key of a ``ParameterDict`` inside every LoRA layer, a path
segment of every adapter tensor (``…q_proj.lora_A.<name>.weight``) and, in PEFT's files, a segment it removes
again with a plain string replace (``key.replace("." + name, "")``). A name that is an attribute of those
dicts (``to``, ``type``, ``training``), a segment of PEFT's key grammar (``lora_A``, ``base_layer``,
``weight``) or a segment of the model's own module paths (``model``, ``layers``, ``0``, ``q_proj``) would
break one of them, so it is refused before the model is touched.
"""

from __future__ import annotations

import unicodedata

from torch import nn

from lorakit.core.errors import ConfigError

KEY_GRAMMAR = frozenset(
    {
        "lora_A",
        "lora_B",
        "lora_embedding_A",
        "lora_embedding_B",
        "lora_magnitude_vector",
        "lora_E",
        "lora_A0",
        "lora_B0",
        "lora_dropout",
        "lora_magnitude",
        "ranknum",
        "base_layer",
        "original_module",
        "modules_to_save",
        "weight",
        "bias",
        "scaling",
    }
)
"""Segments of PEFT's (and lorakit's) adapter tensor names."""

_FORBIDDEN_CHARACTERS = "./\\"


def _dict_attributes() -> frozenset[str]:
    """Every attribute of the containers that hold an adapter's tensors and copies by name."""
    return frozenset(dir(nn.ParameterDict()) + dir(nn.ModuleDict()))


DICT_ATTRIBUTES = _dict_attributes()


def check_adapter_name(name: object, model: nn.Module | None = None) -> None:
    """Refuse an adapter name that could collide with module attributes, PEFT's key grammar or ``model``'s
    own module path segments.

    Raises:
        ConfigError: naming the reason and what to do (pick another name).
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"adapter name must be a non-empty string, got {name!r}")
    bad = [c for c in name if c in _FORBIDDEN_CHARACTERS or unicodedata.category(c).startswith("C")]
    if bad:
        raise ConfigError(
            f"adapter name {name!r} contains {bad[0]!r}: names become path segments of tensor keys and "
            "directory names; use letters, digits, '-', '_' or spaces"
        )
    if name != name.strip():
        raise ConfigError(f"adapter name {name!r} starts or ends with whitespace; strip it")
    if name.startswith("registry:"):
        raise ConfigError(
            f"adapter name {name!r} starts with 'registry:', which names registry references; choose another name"
        )
    if name in KEY_GRAMMAR:
        raise ConfigError(
            f"adapter name {name!r} is a segment of PEFT's adapter key names "
            f"(…lora_A.<name>.weight); choose another name"
        )
    if name in DICT_ATTRIBUTES or name.startswith("_"):
        raise ConfigError(
            f"adapter name {name!r} is an attribute of torch's module containers (nn.ParameterDict/"
            "nn.ModuleDict), which hold adapters by name; choose another name"
        )
    if model is not None:
        segments = {part for path, _ in model.named_modules() for part in path.split(".")}
        if name in segments:
            raise ConfigError(
                f"adapter name {name!r} is a segment of this model's module paths; PEFT removes the "
                "adapter name from tensor keys by string replacement, which would corrupt them: "
                "choose another name"
            )
