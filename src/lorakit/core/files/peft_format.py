"""PEFT's on-disk layout: ``adapter_config.json`` fields and ``adapter_model.safetensors`` key names.

A lorakit parameter ``<module>.lora_A.<adapter>`` is stored as ``base_model.model.<module>.lora_A.weight``
(``lora_embedding_A`` for embeddings); a saved module's copy ``<module>.modules_to_save.<adapter>.<p>``
as ``base_model.model.<module>.<p>``. These are the names PEFT, vLLM, TGI and LoRAX read.
"""

from __future__ import annotations

import warnings
from typing import Any

from lorakit.core.config import ALL_LINEAR, LoraConfig
from lorakit.core.errors import AdapterFileError

PREFIX = "base_model.model."
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"

# lorakit field -> PEFT field
_FIELD_MAP = {
    "r": "r",
    "alpha": "lora_alpha",
    "dropout": "lora_dropout",
    "targets": "target_modules",
    "exclude": "exclude_modules",
    "layers": "layers_to_transform",
    "layers_pattern": "layers_pattern",
    "rank_pattern": "rank_pattern",
    "alpha_pattern": "alpha_pattern",
    "bias": "bias",
    "modules_to_save": "modules_to_save",
    "use_rslora": "use_rslora",
    "use_dora": "use_dora",
    "task_type": "task_type",
    "base_model_name_or_path": "base_model_name_or_path",
}

# PEFT fields lorakit reads but does not act on: any value is fine.
_INFORMATIONAL = {
    "peft_type",
    "auto_mapping",
    "peft_version",
    "revision",
    "inference_mode",
    "megatron_core",
    "runtime_config",
    "qalora_group_size",
    "ensure_weight_tying",
    "fan_in_fan_out",
    "init_lora_weights",
}

# PEFT features lorakit does not implement: accepted only "off" (null, false, empty); named when on.
_UNSUPPORTED = {
    "megatron_config": "Megatron parallel layers",
    "trainable_token_indices": "trainable tokens",
    "loftq_config": "LoftQ",
    "eva_config": None,
    "corda_config": "CorDA",
    "lora_ga_config": "LoRA-GA",
    "velora_config": "VeLoRA",
    "alora_invocation_tokens": "activated LoRA (aLoRA)",
    "use_qalora": "QALoRA",
    "monteclora_config": "MonteCLoRA",
    "layer_replication": "layer replication",
    "lora_bias": "a trainable bias on lora_B",
    "target_parameters": "LoRA on parameters (e.g. fused MoE experts)",
    "use_bdlora": "block-diagonal LoRA",
    "arrow_config": "Arrow routing",
    "kasa_config": "KaSA",
}

# PEFT's defaults for fields a file may leave out (older versions wrote fewer fields).
_PEFT_DEFAULTS = {"r": 8, "lora_alpha": 8, "lora_dropout": 0.0, "bias": "none"}

# init_lora_weights values that rewrite W₀ when the adapter is created (PEFT does so on load too).
_BASE_REWRITING_INITS = {"loftq": "LoftQ", "corda": "CorDA", "lora_ga": "LoRA-GA"}


def _is_off(value: Any) -> bool:
    return value is None or value is False or (isinstance(value, (dict, list, str)) and not value)


def config_to_peft(config: LoraConfig, target_leaf_names: list[str], fan_in_fan_out: bool) -> dict[str, Any]:
    """``adapter_config.json`` content. ``all-linear`` is written as the explicit module names it matched,
    as PEFT does, so servers that do not know the shorthand read it."""
    peft = {"peft_type": "LORA"}
    for ours, theirs in _FIELD_MAP.items():
        peft[theirs] = getattr(config, ours)
    if config.targets == ALL_LINEAR:
        peft["target_modules"] = sorted(set(target_leaf_names))
    peft["init_lora_weights"] = "gaussian" if config.init == "gaussian" else True
    peft["fan_in_fan_out"] = fan_in_fan_out
    peft["inference_mode"] = True
    peft["lora_bias"] = False
    return peft


def config_from_peft(data: Any, source: str) -> LoraConfig:
    """A :class:`LoraConfig` from a PEFT ``adapter_config.json`` dict, written by any PEFT version.

    Fields PEFT leaves out take PEFT's defaults (``lora_alpha`` 8). A field lorakit does not know, set to
    null/false/empty, is ignored with one warning naming it; set to anything else it is refused, as is a PEFT
    feature lorakit lacks that is switched on. An ``init_lora_weights`` of ``pissa``/``olora`` (an adapter saved
    without converting it to plain LoRA) rewrites W₀ on load as PEFT does; ``pissa_niter_K``, LoftQ, CorDA and
    LoRA-GA, whose rewritten W₀ lorakit cannot reproduce, are refused.

    Raises:
        AdapterFileError: naming the file and the field.
    """
    if not isinstance(data, dict):
        raise AdapterFileError(f"{source}: expected a JSON object, got {type(data).__name__}")
    peft_type = data.get("peft_type", "LORA")
    if peft_type != "LORA":
        raise AdapterFileError(
            f"{source}: peft_type is {peft_type!r}; lorakit reads LoRA adapters (peft_type 'LORA') only"
        )
    reverse = {theirs: ours for ours, theirs in _FIELD_MAP.items()}
    kwargs: dict[str, Any] = {reverse[key]: value for key, value in _PEFT_DEFAULTS.items()}
    ignored = []
    for key, value in data.items():
        if key in reverse:
            if value is not None or key == "target_modules":
                kwargs[reverse[key]] = value
        elif key in _UNSUPPORTED:
            if not _is_off(value) and _UNSUPPORTED[key] is not None:
                raise AdapterFileError(
                    f"{source}: field {key!r} = {_short(value)} switches on {_UNSUPPORTED[key]}, "
                    "which lorakit does not implement; load this adapter with PEFT"
                )
        elif key not in _INFORMATIONAL:
            if not _is_off(value):
                raise AdapterFileError(
                    f"{source}: unknown config field {key!r} = {_short(value)}; lorakit does not know what "
                    "it changes, so it refuses rather than compute something else — remove the field "
                    "only if you know it is off"
                )
            ignored.append(key)
    if ignored:
        warnings.warn(
            f"{source}: ignoring field(s) {', '.join(map(repr, ignored))} unknown to lorakit (set to null/false/empty)",
            stacklevel=3,
        )
    kwargs["init"] = _init_from_peft(data.get("init_lora_weights", True), source)
    if kwargs.get("targets") is None:
        raise AdapterFileError(
            f"{source}: target_modules is missing; the file does not say which modules the adapter changes"
        )
    if isinstance(kwargs.get("targets"), (set, tuple)):
        kwargs["targets"] = sorted(kwargs["targets"])
    try:
        return LoraConfig(**kwargs)
    except Exception as err:
        raise AdapterFileError(f"{source}: {err}") from None


def _init_from_peft(init: Any, source: str) -> str:
    if init in ("pissa", "olora"):
        return init
    if isinstance(init, str) and init.startswith("pissa_niter_"):
        raise AdapterFileError(
            f"{source}: init_lora_weights {init!r}: the adapter expects a base rewritten by a randomized "
            "SVD, which cannot be reproduced; save it from PEFT with "
            "path_initial_model_for_weight_conversion (plain LoRA) and load that"
        )
    if init in _BASE_REWRITING_INITS:
        raise AdapterFileError(
            f"{source}: init_lora_weights {init!r}: the adapter expects a base rewritten by "
            f"{_BASE_REWRITING_INITS[init]}, which lorakit does not implement; load it with PEFT"
        )
    return "gaussian" if init == "gaussian" else "default"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def file_key(module_name: str, attr: str, kind: str) -> str:
    """PEFT key of lorakit's ``<module>.<attr>.<adapter>`` for a layer of ``kind`` (``linear``/``embedding``)."""
    if kind == "embedding":
        return f"{PREFIX}{module_name}.{ {'lora_A': 'lora_embedding_A', 'lora_B': 'lora_embedding_B'}[attr] }"
    if attr == "lora_magnitude":
        return f"{PREFIX}{module_name}.lora_magnitude_vector"
    return f"{PREFIX}{module_name}.{attr}.weight"


def saved_module_key(module_name: str, param_name: str) -> str:
    return f"{PREFIX}{module_name}.{param_name}"


def bias_key(module_name: str, wrapped: bool) -> str:
    return f"{PREFIX}{module_name}.{'base_layer.' if wrapped else ''}bias"
