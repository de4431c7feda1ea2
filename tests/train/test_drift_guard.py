"""The drift guard: zero for a fresh adapter, gradients only into the adapter, the bucketed KL against the full
KL, and guarded training drifting less on held-out general prompts than plain training."""

from __future__ import annotations

import json

import pytest
import torch

from lorakit.core.errors import DataError
from lorakit.data import collate
from lorakit.eval.drift import drift_kl
from lorakit.eval.regression import general_prompts
from lorakit.train import Trainer
from lorakit.train.drift_guard import DriftGuard, GuardedTokenLoss, base_top_k, bucketed_kl, shipped_guard_prompts
from lorakit.train.guard_cache import CACHE_FILE, GuardBatch
from tests.helpers import randomize_adapter

ROWS = [
    {"prompt": f"Q{i}: colour of item {i}?", "completion": f" item {i} is {c}"}
    for i, c in enumerate(["red", "blue", "green", "black"] * 2)
]


def _config(base, out, guard=None, **train):
    settings = {
        "max_steps": 16,
        "batch_size": 4,
        "lr": 1e-2,
        "warmup_ratio": 0.0,
        "eval_every": None,
        "save_every": 16,
        "precision": "fp32",
        "seed": 0,
    }
    settings.update(train)
    return {
        "base": base,
        "lora": {"r": 8, "alpha": 16},
        "data": {"format": "completion", "max_length": 64},
        "train": settings,
        "output": str(out),
        "drift_guard": guard,
    }


GUARD = {"weight": 1.0, "batch_size": 4, "respond_tokens": 4, "top_k": 16}


@pytest.mark.parametrize("k,exact", [(49152, True), (64, False), (4, False)])
def test_bucketed_kl_is_the_full_kl_with_every_token_and_a_lower_bound_otherwise(k, exact):
    generator = torch.Generator().manual_seed(0)
    base_logits, adapted_logits = (torch.randn(6, 49152, generator=generator) * 3 for _ in range(2))
    ids, top, tail = base_top_k(base_logits, None, k)
    got = float(bucketed_kl(adapted_logits, None, ids, top, tail))
    p = base_logits.double().log_softmax(-1)
    full = float((p.exp() * (p - adapted_logits.double().log_softmax(-1))).sum())
    if exact:
        assert got == pytest.approx(full, rel=1e-4)
    else:
        assert 0 <= got <= full * (1 + 1e-5)


def _trainer(base, tmp_path, guard):
    trainer = Trainer.from_config(_config(base, tmp_path / "run", guard), train_data=ROWS, progress=False)
    trainer.loss_fn = GuardedTokenLoss(trainer.model, 1.0)
    return trainer


def test_terms_are_exactly_zero_for_a_fresh_adapter_and_their_gradient_reaches_only_the_adapter(base, tmp_path):
    trainer = _trainer(base, tmp_path, {**GUARD, "batch_weight": 1.0})
    guard = next(cb for cb in trainer.callbacks if isinstance(cb, DriftGuard))
    guard.on_train_begin(trainer)
    batch = collate([trainer.train_data.examples[i] for i in range(4)], trainer.pad_id)
    trainer.model.train()
    assert float(guard.loss_term(trainer).detach()) == 0.0
    _, stats = trainer.loss_fn(**batch)
    assert float(stats["batch_kl"]) == 0.0

    randomize_adapter(trainer.model, scale=0.2)
    term = guard.loss_term(trainer)
    _, stats = trainer.loss_fn(**batch)
    assert float(term.detach()) > 0 and float(stats["batch_kl"]) > 0
    term.backward()
    loss, _ = trainer.loss_fn(**batch)  # CE + non-target KL of the training batch
    loss.backward()
    for name, param in trainer.model.named_parameters():
        if "lora_" in name:
            assert param.grad is not None and float(param.grad.abs().sum()) > 0, name
        else:
            assert param.grad is None, name


def test_guarded_training_drifts_less_on_held_out_general_prompts(base, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    held_out = general_prompts()[:8]
    guard_file = tmp_path / "guard.jsonl"
    guard_file.write_text("".join(shipped_guard_prompts().read_text().splitlines(keepends=True)[:8]))
    drift = {}
    for name, guard in (("plain", None), ("guarded", {**GUARD, "weight": 4.0, "data": str(guard_file)})):
        trainer = Trainer.from_config(_config(base, tmp_path / name, guard), train_data=ROWS, progress=False)
        trainer.fit()
        drift[name] = drift_kl(trainer.model, tokenizer, held_out)
    assert drift["guarded"] < 0.5 * drift["plain"]
    records = [json.loads(line) for line in (tmp_path / "guarded" / "metrics.jsonl").read_text().splitlines()]
    assert all("drift_kl" in r for r in records if "loss" in r)
    assert records[0]["drift_kl"] == 0.0 and records[-1]["drift_kl"] > 0
    meta = json.loads((tmp_path / "guarded" / "lorakit.json").read_text())
    assert meta["objective"] == "sft+drift_guard" and meta["config"]["drift_guard"]["weight"] == 4.0


def test_a_guard_file_row_without_text_names_file_and_line(base, tmp_path):
    data = tmp_path / "general.jsonl"
    data.write_text(json.dumps({"text": "A plain paragraph."}) + "\n" + json.dumps({"body": "x"}) + "\n")
    trainer = Trainer.from_config(
        _config(base, tmp_path / "run", {**GUARD, "data": str(data)}), train_data=ROWS, progress=False
    )
    with pytest.raises(DataError, match=f"{data}:2: a drift-guard row needs"):
        trainer.fit()


@pytest.mark.parametrize(
    "variant",
    [{"quantize": "nf4"}, {"lora": {"use_dora": True}}, {"quantize": "nf4", "lora": {"use_dora": True}}],
    ids=["qlora", "dora", "qdora"],
)
def test_with_qlora_and_dora_the_term_starts_at_zero_and_trains_only_the_adapter(base, tmp_path, variant):
    config = _config(base, tmp_path / "run", {**GUARD, "data": str(_small_guard(tmp_path))})
    config["lora"] = {**config["lora"], "targets": "all-linear", **variant.get("lora", {})}
    config["quantize"] = variant.get("quantize")
    trainer = Trainer.from_config(config, train_data=ROWS, progress=False)
    guard = next(cb for cb in trainer.callbacks if isinstance(cb, DriftGuard))
    guard.on_train_begin(trainer)
    trainer.model.train()
    # a fresh adapter is the base: 0 up to rounding (DoRA's m·W/‖W‖ rounds; plain LoRA's B = 0 is exact)
    assert float(guard.loss_term(trainer).detach()) <= (1e-6 if "lora" in variant else 0.0)
    randomize_adapter(trainer.model, scale=0.2)
    term = guard.loss_term(trainer)
    assert float(term.detach()) > 1e-3
    term.backward()
    grads = {}
    for name, param in trainer.model.named_parameters():
        if "lora_" in name:
            assert param.grad is not None and float(param.grad.abs().sum()) > 0, name
            grads[name] = param.grad
        else:
            assert param.grad is None, f"{name} is not an adapter parameter but has a gradient"
    if "lora" in variant:
        assert any("magnitude" in n for n in grads)


def _small_guard(tmp_path):
    path = tmp_path / "guard.jsonl"
    path.write_text("".join(shipped_guard_prompts().read_text().splitlines(keepends=True)[:4]))
    return path


def test_the_base_distributions_are_cached_in_the_run_directory_and_reused(base, tmp_path):
    guard_file = _small_guard(tmp_path)
    first = _trainer(base, tmp_path, {**GUARD, "data": str(guard_file)})
    built = next(cb for cb in first.callbacks if isinstance(cb, DriftGuard))
    built.on_train_begin(first)
    cache = first.output / CACHE_FILE
    assert not built.cache_reused and cache.is_file()
    second = _trainer(base, tmp_path, {**GUARD, "data": str(guard_file)})
    randomize_adapter(second.model, scale=0.2)  # a resumed run's adapter: the cache must not depend on it
    reused = next(cb for cb in second.callbacks if isinstance(cb, DriftGuard))
    reused.on_train_begin(second)
    assert reused.cache_reused
    for (a, total_a), (b, total_b) in zip(built.batches, reused.batches, strict=True):
        assert total_a == total_b
        for field in ("input_ids", "attention_mask", "ids", "top", "tail"):
            assert torch.equal(getattr(a, field), getattr(b, field)), field
    # another top_k or other guard text is another cache: rebuilt, not misread
    with guard_file.open("a") as handle:
        handle.write(json.dumps({"text": "One more paragraph of general text."}) + "\n")
    changed = _trainer(base, tmp_path, {**GUARD, "data": str(guard_file)})
    rebuilt = next(cb for cb in changed.callbacks if isinstance(cb, DriftGuard))
    rebuilt.on_train_begin(changed)
    assert not rebuilt.cache_reused and sum(t for _, t in rebuilt.batches) > sum(t for _, t in built.batches)


def test_a_process_share_of_a_guard_batch_is_its_rows_with_their_positions():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
    ids = torch.arange(12).reshape(3, 4) * mask
    n = int(mask.sum())
    batch = GuardBatch(
        ids,
        mask,
        torch.arange(n)[:, None].repeat(1, 2),
        torch.arange(n, dtype=torch.float)[:, None],
        -torch.arange(n, dtype=torch.float),
    )
    rows_of_positions = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    for world in (1, 2, 3):
        for rank in range(world):
            share = batch.share(rank, world)
            keep = rows_of_positions % world == rank
            assert torch.equal(share.input_ids[share.attention_mask.bool()], ids[mask.bool()][keep])
            assert torch.equal(share.tail, batch.tail[keep]) and torch.equal(share.ids, batch.ids[keep])
            assert share.input_ids.shape[1] == int(mask[rank::world].sum(1).max())
    assert batch.share(3, 4) is None
