"""Kind 7 of issue 11: adapter names that would collide with module attributes or PEFT's key grammar are
refused before anything is touched; inject, load_adapter and delete_adapter are all or nothing."""

from __future__ import annotations

import pytest
import torch

import lorakit as lk
from lorakit.core.errors import AdapterStateError, ConfigError, LorakitError
from lorakit.core.files import load as load_module
from lorakit.core.files import load_adapter, save_adapter
from tests.helpers import logits, randomize_adapter, tiny_llama, token_batch


def snapshot(model):
    """Everything 'exactly as before' means: module tree with types, tensors, trainability, lorakit state."""
    tree = [(name, type(m).__name__) for name, m in model.named_modules()]
    tensors = {k: v.detach().clone() for k, v in model.state_dict().items()}
    trainable = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    return tree, tensors, trainable, modes, lk.adapter_names(model), lk.active_adapters(model)


def assert_same(before, after):
    assert before[0] == after[0]
    assert before[1].keys() == after[1].keys()
    for key in before[1]:
        assert torch.equal(before[1][key], after[1][key]), key
    assert before[2:] == after[2:]


@pytest.mark.parametrize(
    "name, reason",
    [
        ("to", "attribute of torch's module containers"),
        ("type", "attribute of torch's module containers"),
        ("training", "attribute of torch's module containers"),
        ("state_dict", "attribute of torch's module containers"),
        ("_private", "attribute of torch's module containers"),
        ("lora_A", "segment of PEFT's adapter key names"),
        ("base_layer", "segment of PEFT's adapter key names"),
        ("weight", "segment of PEFT's adapter key names"),
        ("modules_to_save", "segment of PEFT's adapter key names"),
        ("a.b", "contains '.'"),
        ("a/b", "contains '/'"),
        ("tab\there", "contains '\\\\t'"),
        ("", "non-empty string"),
        (" padded ", "whitespace"),
        ("registry:x", "registry"),
        ("layers", "segment of this model's module paths"),
        ("0", "segment of this model's module paths"),
        ("q_proj", "segment of this model's module paths"),
        (3, "non-empty string"),
    ],
)
def test_colliding_names_are_refused_before_the_model_is_touched(name, reason):
    model = tiny_llama()
    lk.inject(model, lk.LoraConfig(r=2, alpha=4, targets=["k_proj"]), name="first")
    before = snapshot(model)
    with pytest.raises(ConfigError, match=reason):
        lk.inject(model, lk.LoraConfig(r=2, alpha=4, targets=["q_proj"], modules_to_save=["lm_head"]), name=name)
    assert_same(before, snapshot(model))


@pytest.mark.parametrize("name", ["lora", "default", "my-adapter v2", "ünïcode", "v1_2"])
def test_accepted_names_round_trip_through_files_merge_and_delete(name, tmp_path):
    ids = token_batch()
    base = logits(tiny_llama(), ids)
    model = tiny_llama()
    lk.inject(model, lk.LoraConfig(r=2, alpha=4, targets=["q_proj"]), name=name)
    randomize_adapter(model, name)
    expected = logits(model, ids)
    save_adapter(model, tmp_path, name=name)
    again = load_adapter(tiny_llama(), tmp_path, name=name)
    torch.testing.assert_close(logits(again, ids), expected, rtol=0, atol=1e-6)
    lk.merge(again, name)
    lk.unmerge(again)
    lk.delete_adapter(again, name)
    torch.testing.assert_close(logits(again, ids), base, rtol=0, atol=1e-6)


def test_inject_failing_halfway_leaves_the_model_exactly_as_before():
    """PiSSA with r=20 fits q_proj (32×32) but not k_proj (16×32): the error comes after q_proj was wrapped
    and its W₀ rewritten to the residual; all of it must be undone."""
    model = tiny_llama()
    lk.inject(model, lk.LoraConfig(r=2, alpha=4, targets=["v_proj"]), name="first")
    randomize_adapter(model, "first")
    before = snapshot(model)
    with pytest.raises(ConfigError, match="r ≤ min"):
        lk.inject(
            model, lk.LoraConfig(r=20, alpha=20, targets=["q_proj", "k_proj"], init="pissa", bias="all"), name="second"
        )
    assert_same(before, snapshot(model))
    assert "lorakit_fingerprint" not in model.__dict__


def test_load_adapter_failing_after_inject_leaves_the_model_exactly_as_before(tmp_path, monkeypatch):
    source = tiny_llama()
    lk.inject(source, lk.LoraConfig(r=2, alpha=4, targets=["q_proj"], bias="lora_only", modules_to_save=["lm_head"]))
    randomize_adapter(source)
    save_adapter(source, tmp_path)
    model = tiny_llama()
    before = snapshot(model)
    copy_in = load_module._copy_in

    def copy_then_fail(*args):
        copy_in(*args)  # every tensor written, biases included
        raise OSError("disk vanished")

    monkeypatch.setattr(load_module, "_copy_in", copy_then_fail)
    with pytest.raises(OSError):
        load_adapter(model, tmp_path)
    assert_same(before, snapshot(model))


def test_delete_of_a_merged_adapter_is_refused_before_any_layer_changes():
    model = tiny_llama()
    lk.inject(model, lk.LoraConfig(r=2, alpha=4, targets=["q_proj"], modules_to_save=["lm_head"]))
    randomize_adapter(model)
    lk.merge(model)
    before = snapshot(model)
    with pytest.raises(AdapterStateError, match="unmerge"):
        lk.delete_adapter(model, "default")
    assert_same(before, snapshot(model))


def test_errors_are_lorakit_errors():
    assert issubclass(ConfigError, LorakitError) and issubclass(AdapterStateError, LorakitError)
