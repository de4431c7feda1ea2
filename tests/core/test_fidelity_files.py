"""Kind 6 of issue 11: adapter files from other PEFT versions and setups.

Each off form of an unknown field (null, false, empty list/dict/string) loads with PEFT's outputs and exactly one
warning naming the field; an unknown field set to something else, or a PEFT feature lorakit lacks switched on,
is refused naming the field with the model untouched; old-style configs found on model hubs load. An adapter
carrying a resized embedding / output head (PEFT saves the full matrices) loads them with PEFT's outputs, and
a base of another shape gets a typed error naming the key and both shapes.
"""

from __future__ import annotations

import json
import shutil
import warnings

import peft
import pytest
import torch

import lorakit as lk
from lorakit.core.errors import AdapterFileError, LorakitError
from tests.helpers import logits, tiny_llama, token_batch

TOL = 1e-5
IDS = token_batch()


@pytest.fixture(scope="module")
def peft_adapter(tmp_path_factory):
    """A PEFT adapter on q_proj/v_proj with random B, its directory and PEFT's logits."""
    warnings.simplefilter("ignore")
    pm = peft.get_peft_model(
        tiny_llama(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    ).eval()
    path = tmp_path_factory.mktemp("peft") / "adapter"
    pm.save_pretrained(path)
    return path, logits(pm, IDS)


def _with_fields(src, dst, fields: dict, drop: tuple[str, ...] = ()):
    shutil.copytree(src, dst)
    config = json.loads((dst / "adapter_config.json").read_text())
    config.update(fields)
    for key in drop:
        config.pop(key, None)
    (dst / "adapter_config.json").write_text(json.dumps(config))
    return dst


OFF_FORMS = {"null": None, "false": False, "empty_list": [], "empty_dict": {}, "empty_string": ""}


@pytest.mark.parametrize("form", list(OFF_FORMS))
def test_unknown_field_that_is_off_loads_with_one_warning_naming_it(peft_adapter, tmp_path, form):
    src, reference = peft_adapter
    path = _with_fields(src, tmp_path / "a", {"future_feature_config": OFF_FORMS[form]})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = lk.load_adapter(tiny_llama(), path)
    notes = [str(w.message) for w in caught if "future_feature_config" in str(w.message)]
    assert len(notes) == 1 and "ignoring" in notes[0]
    assert (logits(model, IDS) - reference).abs().max() <= TOL


OLD_STYLE = {  # configs as older PEFT versions wrote them (fields since removed, fewer fields)
    "peft_0.2": (
        {"enable_lora": None, "merge_weights": False},
        ("use_rslora", "use_dora", "layer_replication", "exclude_modules", "lora_bias", "target_parameters"),
    ),
    "peft_0.6": ({"loftq_config": {}, "rank_pattern": {}, "alpha_pattern": {}}, ("use_dora", "megatron_config")),
    "no_peft_version": ({}, ("peft_version", "revision", "auto_mapping")),
    "nulls_for_known_fields": (
        {
            "lora_dropout": None,
            "layers_to_transform": None,
            "modules_to_save": None,
            "use_dora": None,
            "use_rslora": None,
        },
        (),
    ),
}


@pytest.mark.parametrize("style", list(OLD_STYLE))
def test_old_style_configs_load_with_peft_outputs(peft_adapter, tmp_path, style):
    src, reference = peft_adapter
    fields, drop = OLD_STYLE[style]
    path = _with_fields(src, tmp_path / "a", fields, drop)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = lk.load_adapter(tiny_llama(), path)
    assert (logits(model, IDS) - reference).abs().max() <= TOL


REFUSED_FIELDS = {  # field -> (value switching something on, words of the refusal)
    "future_scale": (0.5, "unknown config field 'future_scale'"),
    "merge_weights": (True, "unknown config field 'merge_weights'"),
    "use_dora_v2": ("yes", "unknown config field 'use_dora_v2'"),
    "lora_bias": (True, "'lora_bias'.*trainable bias"),
    "trainable_token_indices": ([1, 2], "'trainable_token_indices'.*trainable tokens"),
    "layer_replication": ([[0, 1]], "'layer_replication'"),
    "use_qalora": (True, "'use_qalora'"),
    "alora_invocation_tokens": ([5], "'alora_invocation_tokens'"),
    "target_parameters": (["mlp.gate_proj.weight"], "'target_parameters'"),
    "init_lora_weights": ("loftq", "init_lora_weights 'loftq'"),
    "peft_type": ("IA3", "peft_type is 'IA3'"),
}


@pytest.mark.parametrize("field", list(REFUSED_FIELDS))
def test_field_that_changes_the_math_is_refused_by_name(peft_adapter, tmp_path, field):
    src, _ = peft_adapter
    value, words = REFUSED_FIELDS[field]
    path = _with_fields(src, tmp_path / "a", {field: value})
    model = tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(AdapterFileError, match=words):
        lk.load_adapter(model, path)
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def _resized(vocab: int, seed: int):
    model = tiny_llama()
    torch.manual_seed(seed)
    model.resize_token_embeddings(vocab, mean_resizing=False)
    return model.eval()


@pytest.mark.parametrize(
    "targets",
    [["embed_tokens", "q_proj"], ["q_proj", "lm_head"], ["q_proj"]],
    ids=["lora_embedding", "lora_lm_head", "lora_attention_only"],
)
def test_resized_vocabulary_carried_by_the_adapter_loads_with_peft_outputs(tmp_path, targets):
    warnings.simplefilter("ignore")
    trained = _resized(104, seed=10)
    config = peft.LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=targets,
        init_lora_weights=False,
        modules_to_save=None if "embed_tokens" in targets else ["embed_tokens"],
    )
    pm = peft.get_peft_model(trained, config).eval()
    pm.save_pretrained(tmp_path / "a", save_embedding_layers=True)
    ids = torch.tensor([[1, 5, 97, 100, 103, 7]])  # new tokens among them
    oracle = logits(peft.PeftModel.from_pretrained(_resized(104, seed=99), tmp_path / "a").eval(), ids)
    model = lk.load_adapter(_resized(104, seed=99), tmp_path / "a")  # new rows drawn differently: the file's win
    assert (logits(model, ids) - oracle).abs().max() <= TOL

    base = tiny_llama()  # not resized: 96 rows
    before = {k: v.clone() for k, v in base.state_dict().items()}
    with pytest.raises(LorakitError, match=r"(?s)embed_tokens.*104.*96|96.*104"):
        lk.load_adapter(base, tmp_path / "a")
    assert all(torch.equal(base.state_dict()[k], v) for k, v in before.items())
