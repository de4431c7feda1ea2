"""The serving engine without HTTP: mixed-adapter batches, continuous batching, the adapter cache, sampling, stops."""

from __future__ import annotations

import shutil

import pytest
import torch

import lorakit as lk
from lorakit.core.errors import AdapterFileError, BaseMismatchError
from lorakit.serve import CacheFullError, PromptTooLongError, QueueFullError, SamplingParams, UnknownAdapterError
from lorakit.serve import batch as batching
from lorakit.serve.sampling import TextStream
from tests.serve.support import engine_with, reference_greedy, save_adapters, tiny_base, tokenizer

ATOL = 1e-4  # fp32: batched (padded, bmm) versus alone (merged weights)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    return save_adapters(tmp_path_factory.mktemp("adapters"), {"a": 4, "b": 4, "c": 8, "d": 2})


def _collect(engine, adapter, prompt, **params):
    events = []
    request = engine.submit(
        adapter, prompt, SamplingParams(**params), lambda kind, payload: events.append((kind, payload))
    )
    return request, events


def test_mixed_batch_logits_match_each_adapter_merged_alone(adapters):
    engine = engine_with(adapters)
    prompts = [[5, 17, 300, 42, 9], [7, 8], [1000, 2000, 3000], [11, 12, 13, 14], [99, 98, 97, 96, 95, 94]]
    names = ["a", None, "b", "c", "a"]
    for name in names:
        if name:
            engine.cache.acquire(name)
    with torch.no_grad():
        batch, first = batching.prefill(engine.model, engine.layers, prompts, names, names, engine.pad_id)
        second = batching.decode(engine.model, engine.layers, batch, [3, 4, 5, 6, 7])
    for row, (prompt, name) in enumerate(zip(prompts, names)):
        model = tiny_base()
        if name:
            lk.load_adapter(model, adapters[name], "ref")
            lk.merge(model, "ref")
        with torch.no_grad():
            alone = model(input_ids=torch.tensor([prompt + [3 + row]])).logits[0]
        assert (first[row] - alone[-2]).abs().max() <= ATOL, f"row {row} ({name}) prefill"
        assert (second[row] - alone[-1]).abs().max() <= ATOL, f"row {row} ({name}) decode"
    with lk.disabled(tiny_base()) as base, torch.no_grad():
        assert (
            base(input_ids=torch.tensor([prompts[0]])).logits[0, -1] - first[0]
        ).abs().max() > 1e-2  # adapters matter


def test_mixed_batch_greedy_tokens_match_alone_including_late_joiners(adapters):
    engine = engine_with(adapters, max_batch=8)
    jobs = [
        ("a", [5, 17, 300, 42, 9]),
        (None, [7, 8]),
        ("b", [1000, 2000, 3000]),
        ("c", [11, 12, 13, 14]),
        ("d", [21, 22, 23, 24, 25, 26, 27]),
    ]
    early = [_collect(engine, name, prompt, max_tokens=6, temperature=0) for name, prompt in jobs[:3]]
    engine.step()
    engine.step()
    late = [_collect(engine, name, prompt, max_tokens=6, temperature=0) for name, prompt in jobs[3:]]
    engine.run_until_idle()
    for (name, prompt), (request, events) in zip(jobs, early + late):
        expected = reference_greedy(prompt, adapters[name] if name else None, 6, eos=engine.eos_ids)
        assert request.tokens == expected, f"{name}: {request.tokens} vs {expected}"
        assert events[-1] == ("done", request.finish_reason)


def test_eviction_respects_the_bound_and_an_evicted_adapter_reloads(adapters):
    engine = engine_with(adapters, max_resident=2, max_batch=2)
    assert len(engine.cache.resident) == 2
    first = {}
    for name in ["a", "a", "b", "c", "d", "a", "c"]:
        request, _ = _collect(engine, name, [5, 6, 7], max_tokens=3, temperature=0)
        while engine.scheduler.busy:
            engine.step()
            assert len(engine.cache.resident) <= 2
        assert first.setdefault(name, request.tokens) == request.tokens  # reloaded adapter, same output
    counts = {
        s.labels["event"]: s.value
        for m in engine.metrics.cache.collect()
        for s in m.samples
        if s.name.endswith("_total")
    }
    assert counts["evict"] >= 4 and counts["miss"] >= 4 and counts["hit"] >= 1


def test_ram_budget_bounds_resident_bytes(adapters):
    size_a = sum(p.stat().st_size for p in adapters["a"].glob("*.safetensors"))
    engine = engine_with({}, max_bytes=int(size_a * 1.5))
    for name in ["a", "b"]:
        engine.load_adapter(name, adapters[name])
        assert engine.cache.resident_bytes <= int(size_a * 1.5)
    assert list(engine.cache.resident) == ["b"]
    with pytest.raises(AdapterFileError, match="cache budget"):
        engine.load_adapter("c", adapters["c"])  # rank 8: larger than the whole budget
    assert "c" not in engine.adapters()


def test_pinned_adapters_are_not_evicted(adapters):
    engine = engine_with({"a": adapters["a"]}, max_resident=1, max_batch=2)
    engine.cache.register("b", adapters["b"], load=False)
    engine.cache.acquire("a")
    with pytest.raises(CacheFullError):
        engine.cache.acquire("b")
    engine.cache.release("a")
    engine.cache.acquire("b")
    assert list(engine.cache.resident) == ["b"]


def test_a_hot_adapter_does_not_starve_a_cold_one(adapters):
    engine = engine_with(adapters, max_batch=2)
    hot = [_collect(engine, "a", [5, 6, 7], max_tokens=3, temperature=0)[0] for _ in range(8)]
    cold, _ = _collect(engine, "b", [5, 6, 7], max_tokens=3, temperature=0)
    engine.step()
    running = engine.scheduler.running.rows
    assert cold in running and hot[0] in running
    engine.run_until_idle()
    assert cold.finish_reason == "length" and all(r.finish_reason == "length" for r in hot)


def test_a_cancelled_request_leaves_the_batch_and_releases_its_adapter(adapters):
    engine = engine_with(adapters, max_batch=4)
    stay, _ = _collect(engine, "a", [5, 6, 7], max_tokens=40, temperature=0)
    gone, events = _collect(engine, "b", [5, 6, 7, 8], max_tokens=40, temperature=0)
    engine.step()
    engine.step()
    gone.cancel()
    engine.step()
    assert engine.scheduler.running.rows == [stay]
    assert events[-1] == ("done", "cancelled") and "b" not in engine.cache.pins
    engine.run_until_idle()
    assert len(stay.tokens) == 40 or stay.finish_reason == "stop"


def test_seeded_sampling_is_reproducible_whatever_shares_the_batch(adapters):
    engine = engine_with(adapters, max_batch=4)
    alone, _ = _collect(engine, "a", [5, 6, 7], max_tokens=8, temperature=0.9, top_p=0.8, seed=7)
    engine.run_until_idle()
    together = [
        _collect(engine, name, [5, 6, 7], max_tokens=8, temperature=0.9, top_p=0.8, seed=7)[0]
        for name in ["b", "a", None]
    ]
    other_seed, _ = _collect(engine, "a", [5, 6, 7], max_tokens=8, temperature=0.9, top_p=0.8, seed=8)
    engine.run_until_idle()
    assert together[1].tokens == alone.tokens
    assert other_seed.tokens != alone.tokens


def test_stop_string_ends_the_completion_before_it(adapters):
    engine = engine_with(adapters)
    full = engine.generate("The weather today", "a", max_tokens=12, temperature=0)
    stop = full.text[len(full.text) // 2 : len(full.text) // 2 + 3]
    cut = engine.generate("The weather today", "a", max_tokens=12, temperature=0, stop=[stop])
    assert cut.finish_reason == "stop" and cut.text == full.text[: full.text.find(stop)]


def test_text_stream_holds_back_a_possible_stop_prefix():
    tok = tokenizer()
    ids = tok.encode(" hello world, this is fine")
    stream = TextStream(tok, ["is fi"])
    sent = "".join(stream.push(i) for i in ids) + stream.finish()
    assert stream.stopped and sent == " hello world, this "


def test_eos_ends_generation_without_emitting_it(adapters):
    engine = engine_with(adapters)
    free = engine.generate([5, 6, 7], "a", max_tokens=6, temperature=0)
    engine.eos_ids = {free.tokens[2]}
    ended = engine.generate([5, 6, 7], "a", max_tokens=6, temperature=0)
    assert ended.finish_reason == "stop" and ended.tokens == free.tokens[: free.tokens.index(free.tokens[2]) + 1]
    ignored = engine.generate([5, 6, 7], "a", max_tokens=6, temperature=0, ignore_eos=True)
    assert ignored.finish_reason == "length" and ignored.tokens == free.tokens


def test_chat_requests_use_the_tokenizer_chat_template(adapters):
    engine = engine_with(adapters)
    messages = [{"role": "user", "content": "Hi there"}]
    expected = tokenizer().apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert engine.encode_chat(messages) == tokenizer().encode(expected, add_special_tokens=False)
    assert "<|im_start|>assistant" in tokenizer().decode(engine.encode_chat(messages))


def test_bad_requests_raise_typed_errors(adapters, tmp_path):
    engine = engine_with({"a": adapters["a"]}, max_queue=2, max_prompt_tokens=10)
    with pytest.raises(UnknownAdapterError, match="nope"):
        _collect(engine, "nope", [1, 2], max_tokens=2)
    with pytest.raises(PromptTooLongError, match="limit is 10"):
        _collect(engine, "a", list(range(11)), max_tokens=2)
    with pytest.raises(lk.errors.ConfigError, match=r"\[0, 49152\)"):
        _collect(engine, "a", [1, 49152], max_tokens=2)
    _collect(engine, "a", [1, 2], max_tokens=2)
    _collect(engine, None, [1, 2], max_tokens=2)
    with pytest.raises(QueueFullError):
        _collect(engine, "a", [1, 2], max_tokens=2)
    engine.run_until_idle()


def test_broken_or_foreign_adapters_are_refused_and_the_rest_keeps_serving(adapters, tmp_path):
    engine = engine_with({"a": adapters["a"]})
    before = engine.generate([5, 6, 7], "a", max_tokens=4, temperature=0).tokens
    broken = tmp_path / "broken"
    shutil.copytree(adapters["b"], broken)
    weights = broken / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(AdapterFileError, match="corrupt"):
        engine.load_adapter("broken", broken)
    foreign = save_adapters(tmp_path / "foreign", {"f": 4}, base_seed=1)["f"]
    with pytest.raises(BaseMismatchError, match="fingerprint") as err:
        engine.load_adapter("f", foreign)
    assert lk.bases.fingerprint(engine.model)[:12] in str(err.value)
    assert set(engine.adapters()) == {"a"}
    assert engine.generate([5, 6, 7], "a", max_tokens=4, temperature=0).tokens == before


def test_an_adapter_corrupted_after_eviction_fails_only_its_request(adapters, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(adapters["b"], copy)
    engine = engine_with({"b": copy, "a": adapters["a"]}, max_resident=1)
    (copy / "adapter_model.safetensors").write_bytes(b"garbage")
    failed, events = _collect(engine, "b", [5, 6], max_tokens=2, temperature=0)
    fine, _ = _collect(engine, "a", [5, 6], max_tokens=2, temperature=0)
    engine.run_until_idle()
    assert events[-1][0] == "error" and isinstance(events[-1][1], AdapterFileError)
    assert fine.finish_reason == "length" and len(fine.tokens) == 2


def test_a_request_cancelled_while_waiting_never_runs(adapters):
    engine = engine_with(adapters, max_batch=1)
    running, _ = _collect(engine, "a", [5, 6, 7], max_tokens=3, temperature=0)
    waiting, events = _collect(engine, "b", [5, 6, 7], max_tokens=3, temperature=0)
    engine.step()
    waiting.cancel()
    engine.run_until_idle()
    assert events == [("done", "cancelled")] and waiting.tokens == [] and not engine.cache.pins
    assert running.finish_reason == "length"
