"""What an adapter must hold to fit a model: every PEFT key and shape a config resolves to on that model."""

from __future__ import annotations

import torch
from torch import nn

from lorakit.core.bases import fingerprint
from lorakit.core.config import LoraConfig
from lorakit.core.errors import AdapterMismatchError
from lorakit.core.files.peft_format import PREFIX, WEIGHTS_FILE, bias_key, file_key, saved_module_key
from lorakit.core.files.read import AdapterFiles
from lorakit.core.layers import LoraLayer, ModulesToSave, linear_shape
from lorakit.core.targeting import find_saved_modules, find_targets, is_linear, unwrap


def expected_shapes(model: nn.Module, config: LoraConfig) -> dict[str, tuple[int, ...]]:
    """PEFT key -> shape of every tensor an adapter with ``config`` must have on ``model``."""
    shapes: dict[str, tuple[int, ...]] = {}
    for name in find_targets(model, config):
        base = unwrap(model.get_submodule(name))
        r = config.rank_for(name)
        if is_linear(base):
            fan_in, fan_out, _ = linear_shape(base)
            shapes[file_key(name, "lora_A", "linear")] = (r, fan_in)
            shapes[file_key(name, "lora_B", "linear")] = (fan_out, r)
            if config.use_dora:
                shapes[file_key(name, "lora_magnitude", "linear")] = (fan_out,)
        else:
            shapes[file_key(name, "lora_A", "embedding")] = (r, base.num_embeddings)
            shapes[file_key(name, "lora_B", "embedding")] = (base.embedding_dim, r)
        if config.bias != "none" and getattr(base, "bias", None) is not None:
            shapes[bias_key(name, wrapped=True)] = tuple(base.bias.shape)
    for name in find_saved_modules(model, config):
        for pname, p in unwrap(model.get_submodule(name)).named_parameters():
            shapes[saved_module_key(name, pname)] = tuple(p.shape)
    if config.bias == "all":
        targets = set(find_targets(model, config))
        for pname, p in plain_biases(model, targets, config):
            shapes[bias_key(pname, wrapped=False)] = tuple(p.shape)
    return shapes


def plain_biases(model: nn.Module, targets: set[str], config: LoraConfig):
    saved = set(find_saved_modules(model, config))
    for mname, module in model.named_modules():
        if mname in targets or mname in saved or isinstance(module, (LoraLayer, ModulesToSave)):
            continue
        if any(part in f".{mname}." for part in (".base_layer.", ".original_module.", ".modules_to_save.", ".lora_")):
            continue
        bias = module._parameters.get("bias")
        if isinstance(bias, torch.Tensor):
            yield mname, bias


def _normalise_key(key: str) -> str:
    """PEFT sometimes writes a saved module's copy under ``modules_to_save`` and its original too."""
    return key.replace(".modules_to_save.", ".")


def _is_ignorable(key: str) -> bool:
    return ".original_module." in key or key.endswith(".base_layer.weight")


def check_fits(model: nn.Module, files: AdapterFiles,
               shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, torch.Tensor]:
    """Compare an adapter's tensors with what ``model`` expects (``shapes``: :func:`expected_shapes` when the
    caller already has it); return them by normalised key or raise."""
    shapes = expected_shapes(model, files.config) if shapes is None else shapes
    tensors = {_normalise_key(k): v for k, v in files.tensors.items() if not _is_ignorable(k)}
    missing = sorted(set(shapes) - set(tensors))
    unexpected = sorted(set(tensors) - set(shapes))
    where = files.path / WEIGHTS_FILE
    if missing:
        raise AdapterMismatchError(f"{where}: {len(missing)} tensor(s) missing, first {_short(missing[0])}; the file does not match its config")
    if unexpected:
        raise AdapterMismatchError(f"{where}: {len(unexpected)} unexpected tensor(s), first {_short(unexpected[0])}; "
                                   "the adapter was made for a model with other module names")
    for key, shape in shapes.items():
        if tuple(tensors[key].shape) != shape:
            raise AdapterMismatchError(
                f"{where}: layer {_short(key)} expects shape {shape}, file has {tuple(tensors[key].shape)}"
                f"{_fingerprint_hint(model, files)}")
    return tensors


def _short(key: str) -> str:
    return key[len(PREFIX):] if key.startswith(PREFIX) else key


def _fingerprint_hint(model: nn.Module, files: AdapterFiles) -> str:
    theirs = files.base_fingerprint
    if theirs is None:
        return ": this adapter was trained for another base"
    return f": this adapter was trained for another base (fingerprint {theirs[:12]} vs {fingerprint(model)[:12]})"
