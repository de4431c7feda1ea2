"""State shared by every LoRA layer: named adapters side by side, activation, merge bookkeeping, row routing."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from lorakit.core.errors import AdapterStateError, MergeError
from lorakit.core.modules import Wrapper


class RowRouting:
    """Which adapter each row of a batch uses: ``groups`` maps an adapter name to the row indices using it.

    Rows that appear in no group get the base model's output. Built once per batch composition and shared by
    all layers; ``plans`` caches each layer's stacked factors for it (``layers/routed.py``), so keep one
    routing while the rows keep their adapters (decode steps) and make a new one when they change. Batches
    with every row on one adapter have the same plans whatever their size: pass one ``plans`` dict per adapter
    to reuse them.
    """

    def __init__(
        self, row_adapters: list[str | None], device: torch.device | str = "cpu", plans: dict | None = None
    ) -> None:
        self.row_adapters = list(row_adapters)
        self.device = device
        self.plans: dict[tuple[int, bool], tuple[list, list[str]]] = {} if plans is None else plans
        rows_by_name: dict[str, list[int]] = {}
        for row, name in enumerate(self.row_adapters):
            if name is not None:
                rows_by_name.setdefault(name, []).append(row)
        self.groups = {name: torch.tensor(rows, dtype=torch.long, device=device) for name, rows in rows_by_name.items()}


class LoraLayer(Wrapper, ABC):
    """A frozen ``base_layer`` plus named low-rank adapters.

    Each adapter ``name`` owns ``lora_A[name]: (r, in)``, ``lora_B[name]: (out, r)``, a scale and a dropout
    probability. ``active`` lists the adapters whose deltas are added in forward; ``merged`` lists those
    already folded into the base weight.
    """

    adapter_param_names: tuple[str, ...] = ("lora_A", "lora_B")
    """Per-adapter ParameterDicts that hold an adapter's weights (saved to files); absent names are skipped."""
    state_param_names: tuple[str, ...] = ()
    """Per-adapter frozen ParameterDicts kept for bookkeeping (not saved), deleted with the adapter."""
    path: str = "(unattached layer)"
    """The layer's module path in its model (set when it is injected); errors raised by the layer name it."""

    @property
    def wrapped(self) -> nn.Module:
        return self.base_layer

    def __init__(self, base_layer: nn.Module, in_features: int, out_features: int) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.in_features = in_features
        self.out_features = out_features
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        self.scaling: dict[str, float] = {}
        self.dropout_p: dict[str, float] = {}
        self.active: tuple[str, ...] = ()
        self.merged: list[str] = []
        self.disabled = False
        self.routing: RowRouting | None = None

    # -- adapters ---------------------------------------------------------------------------------
    @property
    def adapter_names(self) -> list[str]:
        return list(self.lora_A.keys())

    def rank(self, name: str) -> int:
        self.require_adapter(name)
        return self.lora_A[name].shape[0]

    def require_adapter(self, name: str) -> None:
        """Raise :class:`AdapterStateError` naming this layer's path unless it holds adapter ``name``."""
        if name not in self.lora_A:
            raise AdapterStateError(
                f"layer {self.path}: no adapter named {name!r}; it has {self.adapter_names or 'none'}"
            )

    def add_adapter(self, name: str, r: int, scale: float, dropout: float, init: str = "default") -> None:
        """Create adapter ``name`` of rank ``r``; B (or its analogue) starts at zero so the output is unchanged."""
        if name in self.lora_A:
            raise AdapterStateError(
                f"layer {self.path}: adapter {name!r} already exists; delete it first or pick another name"
            )
        weight = self._base_weight()
        factory = {"device": weight.device, "dtype": self._adapter_dtype(weight)}
        self.lora_A[name] = nn.Parameter(torch.empty(r, self.in_features, **factory))
        self.lora_B[name] = nn.Parameter(torch.empty(self.out_features, r, **factory))
        self.scaling[name] = float(scale)
        self.dropout_p[name] = float(dropout)
        self.reset_adapter(name, init)

    def attach_adapter(self, name: str, A: torch.Tensor, B: torch.Tensor, scale: float, dropout: float) -> None:
        """Add adapter ``name`` from loaded factors ``A: (r, in)``, ``B: (out, r)`` as frozen parameters, without
        initialising (no copy when they already have the adapter dtype). Shapes are the caller's to check."""
        if name in self.lora_A:
            raise AdapterStateError(
                f"layer {self.path}: adapter {name!r} already exists; delete it first or pick another name"
            )
        weight = self._base_weight()
        dtype = self._adapter_dtype(weight)
        self.lora_A[name] = nn.Parameter(A.to(weight.device, dtype), requires_grad=False)
        self.lora_B[name] = nn.Parameter(B.to(weight.device, dtype), requires_grad=False)
        self.scaling[name] = float(scale)
        self.dropout_p[name] = float(dropout)

    @abstractmethod
    def reset_adapter(self, name: str, init: str = "default") -> None:
        """Initialise adapter ``name``'s factors so that its delta is zero."""

    def delete_adapter(self, name: str) -> None:
        if name in self.merged:
            raise AdapterStateError(
                f"layer {self.path}: adapter {name!r} is merged into the base weight; unmerge it before deleting"
            )
        for attr in self.adapter_param_names + self.state_param_names:
            store = getattr(self, attr)
            if name in store:
                del store[name]
        self.scaling.pop(name, None)
        self.dropout_p.pop(name, None)
        self.active = tuple(n for n in self.active if n != name)

    def set_active(self, names: tuple[str, ...]) -> None:
        self.active = tuple(n for n in names if n in self.lora_A)

    def _adapter_dtype(self, weight: torch.Tensor) -> torch.dtype:
        return weight.dtype if weight.dtype.is_floating_point else torch.float32

    def _base_weight(self) -> torch.Tensor:
        return self.base_layer.weight

    # -- merge --------------------------------------------------------------------------------------
    def merge_refusal(self) -> str | None:
        """Why adapters cannot be folded into this layer's base weight, or None when they can (always here; a
        LoRA on a grouped convolution cannot, see :class:`~lorakit.core.layers.conv.LoraConv`)."""
        return None

    @abstractmethod
    def delta_weight(self, name: str) -> torch.Tensor:
        """ΔW of adapter ``name`` in fp32, laid out like the base weight."""

    def read_weight(self) -> torch.Tensor:
        """The base weight in fp32, in its own layout."""
        return self._base_weight().data.float()

    def write_weight(self, weight: torch.Tensor, requantize: bool = False) -> None:
        """Store ``weight`` (fp32) into the base weight, cast to its dtype."""
        target = self._base_weight()
        target.data.copy_(weight.to(target.dtype))

    def merged_weight(self, name: str, weight: torch.Tensor, base: torch.Tensor | None = None) -> torch.Tensor:
        """The weight ``weight`` (fp32, base layout) with adapter ``name`` folded in: ``W + ΔW``. ``base`` is W₀,
        the weight before any merge (default ``weight``); variants whose delta depends on it (DoRA) read it."""
        return weight + self.delta_weight(name)

    def unmerged_weight(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`merged_weight`: ``W − ΔW``."""
        return weight - self.delta_weight(name)

    def original_weight(self) -> torch.Tensor:
        """W₀ in fp32 (base layout): the base weight with every merged adapter taken out again, newest first."""
        weight = self.read_weight()
        for name in reversed(self.merged):
            weight = self.unmerged_weight(name, weight)
        return weight

    def merge(self, name: str, safe: bool = True, requantize: bool = False) -> None:
        """Fold adapter ``name`` into the base weight, computed in fp32 and cast back.

        Adapters fold in the order they are merged, each as it acts in forward after the ones before it, so
        any number of merged adapters (DoRA among them) give the unmerged outputs. A quantised base is
        dequantised first; the result stays in float unless ``requantize``.

        Raises:
            AdapterStateError: ``name`` is already merged here.
            MergeError: with ``safe``, the merged weight would hold NaN/inf (nothing is written).
        """
        if name not in self.lora_A:
            return
        if name in self.merged:
            raise AdapterStateError(
                f"layer {self.path}: adapter {name!r} is already merged; unmerge before merging again"
            )
        weight = self.read_weight()
        merged = self.merged_weight(name, weight, self.original_weight() if self.merged else weight)
        if safe and not torch.isfinite(merged).all():
            raise MergeError(
                f"layer {self.path}: merging adapter {name!r} would write NaN/inf into a weight of shape "
                f"{tuple(merged.shape)}; the adapter is broken"
            )
        self.write_weight(merged, requantize)
        self.merged.append(name)

    def unmerge(self) -> None:
        """Undo every merged adapter at once: W₀ is computed in fp32 (:meth:`original_weight`) and written back."""
        if self.merged:
            self.write_weight(self.original_weight(), requantize=True)
            self.merged.clear()

    # -- forward helpers -----------------------------------------------------------------------------
    def _unmerged_active(self) -> tuple[str, ...]:
        if self.disabled:
            return ()
        return tuple(n for n in self.active if n not in self.merged)

    def _check_routing(self) -> RowRouting | None:
        if self.routing is not None and self.merged:
            raise AdapterStateError(
                f"layer {self.path}: per-row adapters need unmerged adapters; unmerge before routing rows"
            )
        return None if self.disabled else self.routing
