"""What an adapter must hold to fit a model: every PEFT key and shape a config resolves to on that model."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lorakit.core.bases import fingerprint
from lorakit.core.config import LoraConfig
from lorakit.core.errors import AdapterMismatchError
from lorakit.core.files.peft_format import PREFIX, WEIGHTS_FILE, bias_key, file_key, saved_module_key
from lorakit.core.files.read import AdapterFiles
from lorakit.core.layers import LoraLayer, ModulesToSave, linear_shape
from lorakit.core.modules import output_head
from lorakit.core.targeting import find_saved_modules, resolve, unwrap


def expected_shapes(model: nn.Module, config: LoraConfig) -> dict[str, tuple[int, ...]]:
    """PEFT key -> shape of every tensor an adapter with ``config`` must have on ``model`` (targets, ranks and
    saved modules from :func:`lorakit.core.targeting.resolve`)."""
    resolution = resolve(model, config)
    shapes: dict[str, tuple[int, ...]] = {}
    for name, kind in resolution.targets.items():
        base = unwrap(model.get_submodule(name))
        r = config.rank_for(name)
        if kind == "linear":
            fan_in, fan_out, _ = linear_shape(base)
            shapes[file_key(name, "lora_A", "linear")] = (r, fan_in)
            shapes[file_key(name, "lora_B", "linear")] = (fan_out, r)
            if config.use_dora:
                shapes[file_key(name, "lora_magnitude", "linear")] = (fan_out,)
        elif kind == "conv":
            ones = (1,) * (base.weight.dim() - 2)
            shapes[file_key(name, "lora_A", "conv")] = (r, base.in_channels, *base.kernel_size)
            shapes[file_key(name, "lora_B", "conv")] = (base.out_channels, r // base.groups, *ones)
        else:
            shapes[file_key(name, "lora_A", "embedding")] = (r, base.num_embeddings)
            shapes[file_key(name, "lora_B", "embedding")] = (base.embedding_dim, r)
        if config.bias != "none" and getattr(base, "bias", None) is not None:
            shapes[bias_key(name, wrapped=True)] = tuple(base.bias.shape)
    for name in resolution.saved:
        for pname, p in unwrap(model.get_submodule(name)).named_parameters():
            shapes[saved_module_key(name, pname)] = tuple(p.shape)
    if config.bias == "all":
        for pname, p in plain_biases(model, set(resolution.targets), config):
            shapes[bias_key(pname, wrapped=False)] = tuple(p.shape)
    return shapes


def full_layers(model: nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """The full embedding / output-head matrices an adapter carries (PEFT saves them when the vocabulary was
    resized: ``<module>.base_layer.weight`` or ``<module>.weight``), by the model's parameter name.

    Raises:
        AdapterMismatchError: such a matrix does not have the shape of the model's (e.g. the model was not resized).
    """
    head = output_head(model)
    found = {}
    for key, tensor in tensors.items():
        if not key.startswith(PREFIX) or not key.endswith(".weight"):
            continue
        module_name = key[len(PREFIX) : -len(".weight")].removesuffix(".base_layer")
        try:
            module = unwrap(model.get_submodule(module_name))
        except AttributeError:
            continue
        if not (isinstance(module, nn.Embedding) or (head is not None and module is head)):
            continue
        if tuple(tensor.shape) != tuple(module.weight.shape):
            raise AdapterMismatchError(
                f"{path}: the adapter carries the full matrix of {module_name} "
                f"with shape {tuple(tensor.shape)}, the model's "
                f"is {tuple(module.weight.shape)}: the vocabulary was resized for this adapter — call "
                f"model.resize_token_embeddings({tensor.shape[0]}) before loading it"
            )
        found[key] = tensor
    return found


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
    return ".original_module." in key


def check_fits(
    model: nn.Module,
    files: AdapterFiles,
    shapes: dict[str, tuple[int, ...]] | None = None,
    *,
    full_layers_ok: bool = False,
) -> dict[str, torch.Tensor]:
    """Compare an adapter's tensors with what ``model`` expects (``shapes``: :func:`expected_shapes` when the
    caller already has it); return them by normalised key or raise. Full layers (:func:`full_layers`) are
    returned too when ``full_layers_ok``; otherwise (e.g. serving, where the base is shared) they are refused."""
    shapes = expected_shapes(model, files.config) if shapes is None else shapes
    tensors = {_normalise_key(k): v for k, v in files.tensors.items() if not _is_ignorable(k)}
    where = files.path / WEIGHTS_FILE
    full = full_layers(model, {k: v for k, v in tensors.items() if k not in shapes}, where)
    missing = sorted(set(shapes) - set(tensors))
    if full and not full_layers_ok:
        raise AdapterMismatchError(
            f"{where}: the adapter carries the full matrix of {_short(next(iter(full)))} (a resized "
            "vocabulary), which would change the shared base; load it alone with load_adapter, or "
            "merge it into a base of its own (lorakit merge)"
        )
    unexpected = sorted(set(tensors) - set(shapes) - set(full))
    if missing:
        raise AdapterMismatchError(
            f"{where}: {len(missing)} tensor(s) missing, first {_short(missing[0])}; the file does not match its config"
        )
    if unexpected:
        raise AdapterMismatchError(
            f"{where}: {len(unexpected)} unexpected tensor(s), first {_short(unexpected[0])}; "
            "the adapter was made for a model with other module names"
        )
    for key, shape in shapes.items():
        if tuple(tensors[key].shape) != shape:
            raise AdapterMismatchError(
                f"{where}: layer {_short(key)} expects shape {shape}, file has {tuple(tensors[key].shape)}"
                f"{_fingerprint_hint(model, files)}"
            )
    return tensors


def _short(key: str) -> str:
    return key[len(PREFIX) :] if key.startswith(PREFIX) else key


def _fingerprint_hint(model: nn.Module, files: AdapterFiles) -> str:
    theirs = files.base_fingerprint
    if theirs is None:
        return ": this adapter was trained for another base"
    return f": this adapter was trained for another base (fingerprint {theirs[:12]} vs {fingerprint(model)[:12]})"
