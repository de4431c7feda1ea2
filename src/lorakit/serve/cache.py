"""The adapters a server knows and the bounded set of them resident in the model (LRU, count and byte budgets).

Known adapters map a name to a source (a directory or a ``registry:`` reference). Resident adapters live in
the model's LoRA layers, at most ``max_resident`` of them and at most ``max_bytes`` of factors; the least
recently used adapter that no running request holds (``pin``) is unloaded to make room. An evicted adapter
stays known and loads again from its source on its next request.

Loading is validated like :func:`lorakit.load_adapter` (files, base fingerprint, keys, shapes) and then
attaches the file's tensors to the already-wrapped layers without re-initialising anything, so disk to
servable costs about one read of the safetensors file. Adapters with more than A/B factors (DoRA, biases,
saved modules, embeddings) or aimed at modules no adapter wrapped yet take :func:`lorakit.load_adapter`.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

from torch import nn

from lorakit.core import files as io
from lorakit.core.errors import AdapterFileError, AdapterStateError, LorakitError
from lorakit.core.files.peft_format import PREFIX
from lorakit.core.layers import LoraLinear
from lorakit.core.model import adapter_state, delete_adapter, lora_layers


class CacheFullError(LorakitError):
    """Every resident adapter is in use by a running request; the new one must wait."""


class UnknownAdapterError(LorakitError):
    """A request or an admin call names an adapter the server does not know."""


class AdapterCache:
    """Known adapters by name, and the resident subset in LRU order (oldest first)."""

    def __init__(self, model: nn.Module, max_resident: int = 64, max_bytes: int | None = None, on_event=None) -> None:
        if max_resident < 1:
            raise AdapterStateError(f"max_resident must be at least 1, got {max_resident}")
        self.model = model
        self.max_resident = max_resident
        self.max_bytes = max_bytes
        self.sources: dict[str, str] = {}
        self.resident: OrderedDict[str, int] = OrderedDict()  # name -> bytes of its factors
        self.pins: dict[str, int] = {}
        self.on_event = on_event or (lambda event, name: None)
        self.attached: dict[str, list[LoraLinear]] = {}  # adapters on the fast path -> the layers holding them
        self.shapes: dict[str, dict[str, tuple[int, ...]]] = {}  # expected tensor shapes by config
        self.lora_linears: dict[str, LoraLinear] | None = None  # the model's LoRA linears by module name

    @property
    def resident_bytes(self) -> int:
        return sum(self.resident.values())

    def register(self, name: str, source: str | Path, load: bool = True) -> None:
        """Know adapter ``name`` at ``source``; with ``load`` it is read and checked now (errors raise here)."""
        if name in self.sources:
            raise AdapterStateError(f"adapter {name!r} is already loaded; DELETE it first to replace it")
        self.sources[name] = str(source)
        if load:
            try:
                self._load(name)
            except BaseException:
                del self.sources[name]
                raise

    def unregister(self, name: str) -> None:
        """Forget ``name``; it leaves the model now, or when the last running request using it finishes."""
        if name not in self.sources:
            raise UnknownAdapterError(f"no adapter named {name!r}")
        del self.sources[name]
        if name in self.resident and not self.pins.get(name):
            self._unload(name)

    def acquire(self, name: str) -> None:
        """Make ``name`` resident (a hit or a miss) and pin it until :meth:`release`."""
        if name not in self.sources:
            raise UnknownAdapterError(f"no adapter named {name!r}")
        if name in self.resident:
            self.resident.move_to_end(name)
            self.on_event("hit", name)
        else:
            self.on_event("miss", name)
            self._load(name)
        self.pins[name] = self.pins.get(name, 0) + 1

    def release(self, name: str) -> None:
        left = self.pins.get(name, 0) - 1
        if left > 0:
            self.pins[name] = left
            return
        self.pins.pop(name, None)
        if name not in self.sources and name in self.resident:
            self._unload(name)

    # -- loading and eviction ---------------------------------------------------------------------
    def _load(self, name: str) -> None:
        files = io.read_adapter(self.sources[name], device=_device(self.model))  # no copy when attached
        io.check_base(self.model, files)
        signature = repr(files.config)
        if signature not in self.shapes:
            self.shapes[signature] = io.expected_shapes(self.model, files.config)
        tensors = io.check_fits(self.model, files, self.shapes[signature])
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        if self.max_bytes is not None and size > self.max_bytes:
            raise AdapterFileError(
                f"{files.path}: adapter needs {size:,} bytes, more than the cache budget of {self.max_bytes:,}"
            )
        self._make_room(size)
        if self.lora_linears is None:
            self.lora_linears = {m: layer for m, layer in lora_layers(self.model) if isinstance(layer, LoraLinear)}
        layers = _attach(self.model, name, files, tensors, self.lora_linears)
        if layers is None:
            io.load_adapter(self.model, files.path, name)
            self.lora_linears = None  # it may have wrapped more layers
            self.on_event("wrap", name)
        else:
            self.attached[name] = layers
        self.resident[name] = size
        self.on_event("load", name)

    def _make_room(self, size: int) -> None:
        def over() -> bool:
            too_many = len(self.resident) + 1 > self.max_resident
            return too_many or (self.max_bytes is not None and self.resident_bytes + size > self.max_bytes)

        while over():
            victim = next((n for n in self.resident if not self.pins.get(n)), None)
            if victim is None:
                raise CacheFullError(
                    f"all {len(self.resident)} resident adapters are in use; retry when a request finishes"
                )
            self._unload(victim)
            self.on_event("evict", victim)

    def _unload(self, name: str) -> None:
        layers = self.attached.pop(name, None)
        if layers is None:
            delete_adapter(self.model, name)
        else:
            for layer in layers:
                layer.delete_adapter(name)
            del adapter_state(self.model).configs[name]
        del self.resident[name]
        self.on_event("unload", name)


def _attach(
    model: nn.Module, name: str, files: io.AdapterFiles, tensors: dict, lora_linears: dict[str, LoraLinear]
) -> list[LoraLinear] | None:
    """Attach plain A/B factors to layers that are already LoRA layers (``lora_linears``, by module name) and
    return them; None when the adapter needs more (then nothing was touched)."""
    config = files.config
    if config.use_dora or config.bias != "none" or config.modules_to_save:
        return None
    factors: dict[str, dict[str, object]] = {}
    for key, tensor in tensors.items():
        module, _, kind = key[len(PREFIX) :].rpartition(".lora_")
        if kind not in ("A.weight", "B.weight"):
            return None
        factors.setdefault(module, {})[kind[0]] = tensor
    layers = {}
    for module in factors:
        if module not in lora_linears:
            return None
        layers[module] = lora_linears[module]
    for module, layer in layers.items():
        layer.attach_adapter(name, factors[module]["A"], factors[module]["B"], config.scale_for(module), config.dropout)
    adapter_state(model).configs[name] = config
    return list(layers.values())


def _device(model: nn.Module):
    """The device of the model's first parameter (where attached factors live)."""
    return next(model.parameters()).device
