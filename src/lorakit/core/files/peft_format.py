"""PEFT's on-disk layout: ``adapter_config.json`` fields and ``adapter_model.safetensors`` key names.

A lorakit parameter ``<module>.lora_A.<adapter>`` is stored as ``base_model.model.<module>.lora_A.weight``
(``lora_embedding_A`` for embeddings); a saved module's copy ``<module>.modules_to_save.<adapter>.<p>``
as ``base_model.model.<module>.<p>``. These are the names PEFT, vLLM, TGI and LoRAX read.
"""

from __future__ import annotations

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
_INFORMATIONAL = {"peft_type", "auto_mapping", "peft_version", "revision", "inference_mode", "megatron_core",
                  "runtime_config", "qalora_group_size", "ensure_weight_tying", "fan_in_fan_out", "init_lora_weights"}

# PEFT features lorakit does not implement: accepted only at their "off" value.
_UNSUPPORTED_OFF = {"megatron_config": None, "trainable_token_indices": None, "loftq_config": {}, "eva_config": None,
                    "corda_config": None, "lora_ga_config": None, "velora_config": None, "alora_invocation_tokens": None,
                    "use_qalora": False, "monteclora_config": None, "layer_replication": None, "lora_bias": False,
                    "target_parameters": None, "use_bdlora": None, "arrow_config": None, "kasa_config": None}


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
    """Read a PEFT ``adapter_config.json`` dict; unknown or unsupported fields are errors naming the file."""
    if not isinstance(data, dict):
        raise AdapterFileError(f"{source}: expected a JSON object, got {type(data).__name__}")
    peft_type = data.get("peft_type", "LORA")
    if peft_type != "LORA":
        raise AdapterFileError(f"{source}: peft_type is {peft_type!r}; lorakit reads LoRA adapters (peft_type 'LORA') only")
    reverse = {theirs: ours for ours, theirs in _FIELD_MAP.items()}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key in reverse:
            if value is not None or key in ("target_modules",):
                kwargs[reverse[key]] = value
        elif key in _UNSUPPORTED_OFF:
            if value != _UNSUPPORTED_OFF[key] and value not in (None, False, {}, []):
                raise AdapterFileError(f"{source}: field {key!r} = {value!r} uses a PEFT feature lorakit does not support")
        elif key not in _INFORMATIONAL:
            raise AdapterFileError(f"{source}: unknown config field {key!r}; is this a LoRA adapter_config.json?")
    init = data.get("init_lora_weights", True)
    kwargs["init"] = "gaussian" if init == "gaussian" else "default"
    if kwargs.get("targets") is None:
        raise AdapterFileError(f"{source}: target_modules is missing; the file does not say which modules the adapter changes")
    if isinstance(kwargs.get("targets"), (set, tuple)):
        kwargs["targets"] = sorted(kwargs["targets"])
    try:
        return LoraConfig(**kwargs)
    except Exception as err:
        raise AdapterFileError(f"{source}: {err}") from None


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
