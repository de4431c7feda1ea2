"""The serving hot paths: per-row LoRA against a per-row reference (every plan shape), one read of each adapter's
factors per step, the cheap tensor check, grouped admission, and the KV cache passed by its current name."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from lorakit.core.errors import AdapterFileError
from lorakit.core.files.read import check_tensors
from lorakit.core.layers import LoraLinear, RowRouting, routed
from lorakit.serve import SamplingParams
from lorakit.serve import batch as batching
from tests.serve.support import engine_with, reference_greedy, save_adapters

RANKS = {"a": 4, "b": 4, "c": 8, "d": 2}
ATOL = 1e-5  # fp32 against an fp64 reference


@pytest.fixture(scope="module")
def layer():
    torch.manual_seed(0)
    lora = LoraLinear(nn.Linear(16, 24)).eval()
    for i, (name, r) in enumerate(RANKS.items()):
        generator = torch.Generator().manual_seed(i)
        lora.attach_adapter(
            name,
            torch.randn(r, 16, generator=generator),
            torch.randn(24, r, generator=generator),
            scale=0.5 + i,
            dropout=0.0,
        )
    return lora


def _per_row(layer, x: torch.Tensor, names: list) -> torch.Tensor:
    """Each row alone in fp64: ``W₀x + b + s·B(Ax)`` with its own adapter (or none)."""
    weight, bias = layer.base_layer.weight.double(), layer.base_layer.bias.double()
    rows = []
    for row, name in zip(x.double(), names):
        out = row @ weight.T + bias
        if name is not None:
            out = out + layer.scaling[name] * (row @ layer.lora_A[name].double().T) @ layer.lora_B[name].double().T
        rows.append(out)
    return torch.stack(rows)


MIXES = [
    ["a"],  # one row, one adapter: shared factors, addmm
    ["a"] * 5,  # every row on one adapter
    ["a", "b", "c", "d"],  # distinct adapters: one slab each
    ["a", "b", "a", "b", "a"],  # repeated adapters of one rank: gathered slabs, each adapter read once
    ["a", None, "b", "a", "c", "c", None],  # base rows, two ranks, repeats in both
    [None, None],  # base only
    ["d", "a", "d", "d", "b"],  # a group that is not every row, with repeats
]


@pytest.fixture(params=[0, routed.GATHER_MIN_BYTES], ids=["gathered", "default-threshold"])
def gather_min_bytes(request, monkeypatch):
    """Every repeated adapter gathered (the tiny layer never reaches the default threshold), and the default."""
    monkeypatch.setattr(routed, "GATHER_MIN_BYTES", request.param)
    return request.param


@pytest.mark.parametrize("tokens", [None, 1, 3], ids=["2d", "decode", "prefill"])
@pytest.mark.parametrize("names", MIXES, ids=lambda names: "-".join(str(n) for n in names))
def test_routed_rows_equal_each_row_alone(layer, names, tokens, gather_min_bytes):
    x = torch.randn(len(names), 16) if tokens is None else torch.randn(len(names), tokens, 16)
    layer.routing = RowRouting(names)
    try:
        with torch.no_grad():
            got = layer(x)
            again = layer(x)  # the cached plan
    finally:
        layer.routing = None
    expected = torch.stack([_per_row(layer, x[:, t] if tokens else x, names) for t in range(tokens or 1)], dim=1)
    expected = expected if tokens else expected[:, 0]
    assert (got.double() - expected).abs().max() <= ATOL
    assert torch.equal(got, again)


@pytest.mark.parametrize(
    "names, slabs",
    [
        (["a", "b", "a", "b", "a"], 2),
        (["a", "a", "a", "b"], 2),
        (["a", "c", "d", "c"], None),  # one adapter per rank: no stacking at all
        (["a", "b"], 2),
    ],
)
def test_each_adapter_is_stacked_once_however_many_rows_use_it(layer, names, slabs, monkeypatch):
    monkeypatch.setattr(routed, "GATHER_MIN_BYTES", 0)
    with torch.no_grad():
        groups, slow = routed.plan(layer, RowRouting(names))
    assert not slow
    stacked = [g for g in groups if g.stacked]
    if slabs is None:
        assert not stacked and len(groups) == len(set(names))
        return
    assert len(stacked) == 1 and stacked[0].A.shape[0] == slabs and stacked[0].B.shape[0] == slabs


def test_a_gather_saving_less_than_the_threshold_keeps_one_slab_per_row(layer):
    saved = 3 * (4 * 16 + 24 * 4) * 4  # three repeated rank-4 adapters' fp32 factors
    assert saved < routed.GATHER_MIN_BYTES
    with torch.no_grad():
        groups, _ = routed.plan(layer, RowRouting(["a", "b", "a", "b", "a"]))
    assert len(groups) == 1 and groups[0].gather is None and groups[0].A.shape[0] == 5


def test_the_tensor_check_refuses_exactly_what_the_full_count_refuses(tmp_path):
    where = tmp_path / "adapter_model.safetensors"
    key = "base_model.model.layers.0.q_proj.lora_{}.weight"
    cases = [
        ({key.format("A"): torch.ones(4, 8), key.format("B"): torch.zeros(8, 4)}, None),
        (
            {key.format("A"): torch.tensor([[1.0, float("nan")]]), key.format("B"): torch.ones(1, 1)},
            "1 non-finite value(s) (1 NaN, 0 inf) of 2",
        ),
        (
            {key.format("A"): torch.ones(2, 2), key.format("B"): torch.tensor([float("inf"), -float("inf"), 1.0])},
            "2 non-finite value(s) (0 NaN, 2 inf)",
        ),
        ({key.format("A"): torch.full((4,), 3e38)}, None),  # the sum overflows, every value is finite
        ({key.format("A"): torch.full((4,), 60000.0, dtype=torch.float16).view(2, 2)}, None),  # fp16 range
        ({key.format("A"): torch.tensor([1.0, float("nan")], dtype=torch.bfloat16)}, "1 NaN"),
        ({key.format("A"): torch.ones(2, 2, dtype=torch.int32)}, "is int32, not floating point"),
        ({key.format("A"): torch.ones(0, 4)}, None),
        ({"base_model.model.layers.0.step": torch.tensor([3])}, None),  # a non-factor integer tensor is allowed
    ]
    for tensors, refusal in cases:
        if refusal is None:
            assert check_tensors(tensors, where) is tensors
        else:
            with pytest.raises(AdapterFileError, match=refusal.replace("(", r"\(").replace(")", r"\)")) as err:
                check_tensors(tensors, where)
            assert str(where) in str(err.value)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    return save_adapters(tmp_path_factory.mktemp("adapters"), {"a": 4, "b": 4})


def test_a_backlogged_adapter_brings_several_rows_and_a_cold_one_still_gets_in(adapters):
    engine = engine_with(adapters, max_batch=4)
    prompt = [5, 6, 7]
    hot = [engine.submit("a", prompt, SamplingParams(max_tokens=3, temperature=0), lambda *_: None) for _ in range(6)]
    cold = engine.submit("b", prompt, SamplingParams(max_tokens=3, temperature=0), lambda *_: None)
    engine.step()
    running = engine.scheduler.running.rows
    assert running == [hot[0], hot[1], cold, hot[2]]  # turns of 2 (half of 4 free), then 1, then 1
    engine.run_until_idle()
    expected = {name: reference_greedy(prompt, adapters[name], 3, eos=engine.eos_ids) for name in adapters}
    assert all(r.tokens == expected["a"] for r in hot) and cold.tokens == expected["b"]


def test_decoding_passes_the_kv_cache_without_a_deprecation_warning(adapters):
    engine = engine_with(adapters)
    engine.cache.acquire("a")
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        batch, _ = batching.prefill(engine.model, engine.layers, [[5, 6, 7]], ["a"], [0], engine.pad_id)
        batching.decode(engine.model, engine.layers, batch, [8])
    assert batch.cache.get_seq_length() == 4  # the cache the model filled is the batch's own
    assert not [w for w in caught if "past_key_values" in str(w.message)]
