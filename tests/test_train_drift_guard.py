"""The drift guard: zero for a fresh adapter, gradients only into the adapter, the bucketed KL against the full
KL, and guarded training drifting less on held-out general prompts than plain training."""

from __future__ import annotations

import json

import pytest
import torch

from lorakit.cli.quickstart import tiny_base
from lorakit.core import bases
from lorakit.core.errors import DataError
from lorakit.eval.drift import drift_kl
from lorakit.eval.regression import general_prompts
from lorakit.train import Trainer
from lorakit.train.drift_guard import DriftGuard, GuardedTokenLoss, base_top_k, bucketed_kl, shipped_guard_prompts
from lorakit.data import collate
from tests.helpers import randomize_adapter

ROWS = [{"prompt": f"Q{i}: colour of item {i}?", "completion": f" item {i} is {c}"}
        for i, c in enumerate(["red", "blue", "green", "black"] * 2)]


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def base():
    return str(tiny_base(bases.lorakit_home() / "models" / "tiny-demo"))


def _config(base, out, guard=None, **train):
    settings = {"max_steps": 16, "batch_size": 4, "lr": 1e-2, "warmup_ratio": 0.0, "eval_every": None,
                "save_every": 16, "precision": "fp32", "seed": 0}
    settings.update(train)
    return {"base": base, "lora": {"r": 8, "alpha": 16}, "data": {"format": "completion", "max_length": 64},
            "train": settings, "output": str(out), "drift_guard": guard}


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
    trainer = Trainer.from_config(_config(base, tmp_path / "run", {**GUARD, "data": str(data)}), train_data=ROWS,
                                  progress=False)
    with pytest.raises(DataError, match=f"{data}:2: a drift-guard row needs"):
        trainer.fit()
