"""A batch whose rows share an unlabelled prefix runs it once (batch 1) and broadcasts its KV cache: the loss and
every adapter gradient equal the full forward's, on every decoder the path accepts; everywhere it must not be
used (sliding windows, checkpointing, dropout, labels or padding in the prefix, one row, too short a prefix)
the full forward runs, and a cache that is not plain turns the path off for good with the same result."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import lorakit as lk
from lorakit.data.encode import IGNORE
from lorakit.train import Callback, train
from lorakit.train import shared_prefix as shared_module
from lorakit.train.loss import TokenLoss
from lorakit.train.shared_prefix import MIN_SHARED, shared_length
from tests.core.conftest import ARCHS, VOCAB
from tests.helpers import randomize_adapter

PREFIX = 10
"""Tokens every row of :func:`_batch` shares; its first label is at ``PREFIX + 1``, so all of them can be shared."""

NO_DROPOUT = {
    "gpt2": {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0},
    "opt": {"dropout": 0.0},
}
"""Config changes that make an architecture's training forward deterministic (its defaults draw dropout)."""


def _model(arch: str, *, lora_dropout: float = 0.0, training: bool = True, **config) -> torch.nn.Module:
    """Tiny ``arch`` from the parity suite's configs (with ``config`` overrides), an all-linear LoRA with
    random nonzero factors, in training mode like the trainer's."""
    spec = ARCHS[arch]
    settings = spec.config()
    for key, value in config.items():
        setattr(settings, key, value)
    torch.manual_seed(0)
    model = spec.model_cls(settings)
    lk.inject(model, lk.LoraConfig(r=4, alpha=8, targets="all-linear", dropout=lora_dropout))
    randomize_adapter(model, scale=0.1, seed=3)
    return model.train(training)


def _batch(rows: int = 3, length: int = 20) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``(input_ids, attention_mask, labels)``, (rows, length): the first :data:`PREFIX` tokens are
    the same in every row and the next one differs; labels start at ``PREFIX + 1`` (row 0) or later."""
    generator = torch.Generator().manual_seed(7)
    ids = torch.randint(3, VOCAB, (rows, length), generator=generator)
    ids[:, :PREFIX] = ids[0, :PREFIX]
    ids[1:, PREFIX] = (ids[0, PREFIX] + torch.arange(1, rows)) % VOCAB  # the rows part at PREFIX
    mask = torch.ones_like(ids)
    labels = ids.clone()
    for row in range(rows):
        end = length - 2 * row  # row r holds 2r padding tokens
        mask[row, end:], labels[row, end:] = 0, IGNORE
        labels[row, : PREFIX + 1 + row] = IGNORE
    return ids, mask, labels


def _run(model, batch, method: str, share: bool):
    """``(loss, LoRA gradients, input shapes the embedding saw, share_prefix after)`` of one TokenLoss call."""
    loss_fn = TokenLoss(model)
    loss_fn.share_prefix = share
    shapes: list[tuple[int, ...]] = []
    hook = model.get_input_embeddings().register_forward_hook(lambda m, args, out: shapes.append(tuple(args[0].shape)))
    model.zero_grad()
    try:
        loss = getattr(loss_fn, method)(*batch)
    finally:
        hook.remove()
    loss.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads, shapes, loss_fn.share_prefix


def _assert_same(ours, reference):
    (loss, grads, _, _), (ref_loss, ref_grads, _, _) = ours, reference
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=0)
    assert grads.keys() == ref_grads.keys() and any("lora_B" in n for n in grads)
    for name, grad in grads.items():
        scale = ref_grads[name].abs().max()
        assert scale > 0, name
        assert (grad - ref_grads[name]).abs().max() <= 1e-4 * scale, name


# -- the shared path: exact ----------------------------------------------------------------------------------
SHARED_ARCHS = [
    "llama",
    "qwen2",
    "qwen3",
    "gemma",
    "phi3",
    "gpt2",
    "gpt_neox",
    "gptj",  # its head has a bias: the unfused (logits) path
    "falcon",
    "opt",
    "stablelm",
    "olmo",
]


@pytest.mark.parametrize("method", ["forward", "per_sequence"])
@pytest.mark.parametrize("arch", SHARED_ARCHS)
def test_shared_prefix_gives_the_full_forwards_loss_and_gradients(arch, method):
    model = _model(arch, **NO_DROPOUT.get(arch, {}))
    batch = _batch()
    assert shared_length(*batch) == PREFIX
    shared = _run(model, batch, method, share=True)
    full = _run(model, batch, method, share=False)
    rows, length = batch[0].shape
    assert shared[2] == [(1, PREFIX), (rows, length - PREFIX)]  # the prefix ran once, then only the rows' own tokens
    assert full[2] == [(rows, length)]
    assert shared[3] is True
    _assert_same(shared, full)


def test_shared_prefix_runs_with_lora_dropout_outside_training():
    model = _model("llama", lora_dropout=0.1, training=False)
    batch = _batch()
    shared, full = _run(model, batch, "forward", share=True), _run(model, batch, "forward", share=False)
    assert shared[2][0] == (1, PREFIX)
    _assert_same(shared, full)


# -- where it must not run -----------------------------------------------------------------------------------
def _labelled_in_prefix(ids, mask, labels):
    labels = labels.clone()
    labels[2, 5] = ids[2, 5]
    return ids, mask, labels


def _left_padded(ids, mask, labels):
    mask, labels = mask.clone(), labels.clone()
    mask[1, :3], labels[1, :3] = 0, IGNORE  # the tokens match, but row 1 does not attend to them
    return ids, mask, labels


def _short_prefix(ids, mask, labels):
    ids = ids.clone()
    ids[1, MIN_SHARED - 1] = (ids[0, MIN_SHARED - 1] + 1) % VOCAB
    return ids, mask, labels


def _one_row(ids, mask, labels):
    return ids[:1], mask[:1], labels[:1]


def _checkpointing(model):
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


REFUSED = {
    "sliding window layers (gemma2, unfused head)": (lambda: _model("gemma2"), None, True),
    "sliding window layers (gemma3)": (lambda: _model("gemma3"), None, True),
    "gradient checkpointing": (lambda: _checkpointing(_model("llama")), None, True),
    "LoRA dropout while training": (lambda: _model("llama", lora_dropout=0.1), None, False),
    "dropout modules while training (gpt2)": (lambda: _model("gpt2"), None, False),
    "functional dropout from the config (opt)": (lambda: _model("opt"), None, False),
    "attention dropout from the config (llama)": (lambda: _model("llama", attention_dropout=0.1), None, False),
    "a label inside the prefix": (lambda: _model("llama"), _labelled_in_prefix, True),
    "left padding in the prefix": (lambda: _model("llama"), _left_padded, True),
    "a prefix shorter than MIN_SHARED": (lambda: _model("llama"), _short_prefix, True),
    "one row": (lambda: _model("llama"), _one_row, True),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_the_full_forward_runs_where_sharing_would_not_be_exact(case):
    build, change, deterministic = REFUSED[case]
    model = build()
    batch = _batch()
    batch = change(*batch) if change else batch
    ours = _run(model, batch, "forward", share=True)
    assert ours[2] == [tuple(batch[0].shape)]  # one forward over the whole batch, no batch-1 prefix
    assert ours[3] is True  # refused for this batch, not turned off
    if deterministic:
        _assert_same(ours, _run(model, batch, "forward", share=False))


def test_a_cache_that_is_not_plain_turns_sharing_off_with_the_same_result():
    model = _model("mistral")  # sliding_window set: its DynamicCache holds sliding-window layers
    batch = _batch()
    loss_fn = TokenLoss(model)
    shapes: list[tuple[int, ...]] = []
    model.get_input_embeddings().register_forward_hook(lambda m, args, out: shapes.append(tuple(args[0].shape)))
    first = loss_fn(*batch)
    assert shapes == [(1, PREFIX), tuple(batch[0].shape)]  # tried once, then the full forward
    assert loss_fn.share_prefix is False
    shapes.clear()
    second = loss_fn(*batch)
    assert shapes == [tuple(batch[0].shape)]  # not tried again
    reference = _run(model, batch, "forward", share=False)
    torch.testing.assert_close(first.detach(), reference[0], rtol=1e-5, atol=0)
    torch.testing.assert_close(second.detach(), reference[0], rtol=1e-5, atol=0)


# -- shared_length -------------------------------------------------------------------------------------------
def _rows(*rows: list[int]) -> torch.Tensor:
    return torch.tensor(rows)


_BASE = list(range(10, 22))  # 12 tokens
LENGTHS = {
    "identical rows, nothing labelled: all but the last token": (_rows(_BASE, _BASE), None, None, 11),
    "identical rows, the last token labelled": (_rows(_BASE, _BASE), None, {(0, 11)}, 10),
    "a label right after the common tokens shrinks it by one": (
        _rows(_BASE, _BASE[:10] + [1, 2]),
        None,
        {(1, 10)},
        9,
    ),
    "a label further on leaves it whole": (_rows(_BASE, _BASE[:10] + [1, 2]), None, {(1, 11)}, 10),
    "rows differing at token 0": (_rows(_BASE, [1] + _BASE[1:]), None, None, 0),
    "exactly MIN_SHARED common tokens": (_rows(_BASE, _BASE[:MIN_SHARED] + [1] * 4), None, None, MIN_SHARED),
    "one fewer than MIN_SHARED": (_rows(_BASE, _BASE[: MIN_SHARED - 1] + [1] * 5), None, None, 0),
    "right padding ends it": (_rows(_BASE, _BASE), {(1, t) for t in range(9, 12)}, None, 9),
    "left padding at token 0": (_rows(_BASE, _BASE), {(1, 0)}, None, 0),
    "a single row": (_rows(_BASE), None, None, 0),
}


@pytest.mark.parametrize("case", list(LENGTHS))
def test_shared_length(case):
    ids, padded, labelled, expected = LENGTHS[case]
    mask, labels = torch.ones_like(ids), torch.full_like(ids, IGNORE)
    for row, t in padded or ():
        mask[row, t] = 0
    for row, t in labelled or ():
        labels[row, t] = ids[row, t]
    assert shared_length(ids, mask, labels) == expected


# -- the trainer -----------------------------------------------------------------------------------------------
SYSTEM = "You are the support desk of a bicycle shop. Answer in one short sentence and never add a greeting."
CHATS = [
    {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
    }
    for question, answer in [
        ("Do you fix flat tyres?", "Yes, while you wait."),
        ("When are you open?", "Nine to six, Monday to Saturday."),
        ("Can I rent a bike for a day?", "Yes, city bikes cost twelve euros a day."),
        ("Do you sell helmets?", "Yes, from twenty euros."),
        ("Is there parking?", "Two spaces behind the shop."),
        ("Do you service e-bikes?", "Yes, book a slot online."),
        ("How long does a full service take?", "About two days."),
        ("Can I pay by card?", "Yes, all major cards."),
    ]
]


class _BatchShapes(Callback):
    """Records the input shapes the model's embedding sees during training."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def on_train_begin(self, trainer) -> None:
        trainer.model.get_input_embeddings().register_forward_hook(
            lambda m, args, out: self.shapes.append(tuple(args[0].shape))
        )


def _train(base, out, monkeypatch, share: bool):
    with monkeypatch.context() as patch:
        if not share:
            patch.setattr(shared_module, "MIN_SHARED", 10**9)
        shapes = _BatchShapes()
        config = {
            "base": base,
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
            "data": {"format": "chat", "max_length": 96},
            "train": {"max_steps": 3, "batch_size": 4, "lr": 1e-2, "warmup_ratio": 0.0, "precision": "fp32"},
            "output": str(out),
        }
        train(config, train_data=CHATS, callbacks=[shapes], progress=False)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    return losses, load_file(out / "adapter" / "adapter_model.safetensors"), shapes.shapes


def test_training_with_a_shared_system_prompt_matches_training_without(base, tmp_path, monkeypatch):
    losses, adapter, shapes = _train(base, tmp_path / "shared", monkeypatch, share=True)
    ref_losses, ref_adapter, ref_shapes = _train(base, tmp_path / "full", monkeypatch, share=False)
    assert sum(1 for s in shapes if s[0] == 1) == 3  # every step ran its batch's system prompt once
    assert all(s[0] == 4 for s in ref_shapes) and len(ref_shapes) == 3
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert losses == pytest.approx(ref_losses, rel=1e-5)
    assert adapter.keys() == ref_adapter.keys()
    for name, tensor in adapter.items():  # Adam divides by √v: fp32 rounding in small gradients grows to ~1e-5
        scale = ref_adapter[name].abs().max()
        assert scale > 0 and (tensor - ref_adapter[name]).abs().max() <= 1e-4 * scale, name
