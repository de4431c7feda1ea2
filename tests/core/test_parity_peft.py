"""Parity with PEFT 0.21, the oracle for what an adapter means: one table of (architecture × option) cells.

Each supported cell checks, with a non-trivial adapter (random A, B and saved modules) in fp32:
PEFT's file loaded by lorakit gives PEFT's outputs; lorakit's file loaded by PEFT gives lorakit's outputs; and
lorakit's merged model equals its unmerged model and PEFT's merged model (max |Δ| ≤ 1e-5).
A refused cell asserts lorakit's typed error and the words of its message.
"""

from __future__ import annotations

import warnings

import peft
import pytest
import torch

import lorakit as lk
from lorakit.core.errors import AdapterFileError, ConfigError
from lorakit.core.model import adapter_parameters
from tests.core.conftest import ARCHS

TOL = 1e-5

# option -> (PEFT LoraConfig kwargs, or a function of the Arch giving them)
OPTIONS = {
    "list": lambda a: dict(target_modules=a.targets),
    "regex": lambda a: dict(target_modules=rf".*\.({'|'.join(a.targets)})"),
    "all_linear": lambda a: dict(target_modules="all-linear"),
    "exclude": lambda a: dict(target_modules="all-linear", exclude_modules=[a.targets[0]]),
    "exclude_regex": lambda a: dict(target_modules="all-linear", exclude_modules=rf".*\.{a.targets[0]}"),
    "layers_int": lambda a: dict(target_modules=a.targets, layers_to_transform=1),
    "layers_list_pattern": lambda a: dict(target_modules=a.targets, layers_to_transform=[0], layers_pattern=["layers"]),
    "rank_plain": lambda a: dict(target_modules=a.targets, rank_pattern={a.targets[0]: 2}),
    "rank_dotted": lambda a: dict(target_modules=a.targets, rank_pattern={rf"layers.0.self_attn.{a.targets[0]}": 2}),
    "rank_regex_escaped": lambda a: dict(
        target_modules=a.targets, rank_pattern={rf"layers\.0\.self_attn\.{a.targets[0]}": 2}
    ),
    "alpha_alternation": lambda a: dict(target_modules=a.targets, alpha_pattern={"|".join(a.targets): 32}),
    "rslora": lambda a: dict(target_modules=a.targets, use_rslora=True),
    "dora": lambda a: dict(target_modules=a.targets, use_dora=True),
    "bias_all": lambda a: dict(target_modules=a.targets, bias="all"),
    "bias_lora_only": lambda a: dict(target_modules=a.targets, bias="lora_only"),
    "save_head": lambda a: dict(target_modules=a.targets, modules_to_save=[a.head]),
    "save_embed_tokens": lambda a: dict(target_modules=a.targets, modules_to_save=["embed_tokens"]),
    "lora_embedding": lambda a: dict(target_modules=[*a.targets, "embed_tokens"]),
    "dropout_eval": lambda a: dict(target_modules=a.targets, lora_dropout=0.3),
    "gaussian": lambda a: dict(target_modules=a.targets, init_lora_weights="gaussian"),
    "pissa": lambda a: dict(target_modules=a.targets, init_lora_weights="pissa"),
    "olora": lambda a: dict(target_modules=a.targets, init_lora_weights="olora"),
    "two_adapters": lambda a: dict(target_modules=a.targets),
}
ARCH_SPECIFIC = {
    "all_linear_seq_cls": lambda a: dict(target_modules="all-linear", task_type="SEQ_CLS"),
    "conv_patch": lambda a: dict(target_modules=["patch_embeddings.projection", *a.targets]),
}
CORE = ["list", "all_linear", "save_head", "dropout_eval"]
LLAMA_FAMILY = ["llama", "qwen2", "gemma"]
REFUSED = {
    # (arch, option): (error type, words of the message)
    ("llama", "dora_embedding"): (ConfigError, "DoRA adapts linear layers only"),
    ("mixtral", "experts"): (ConfigError, "fused expert parameters"),
}
REFUSED_CELLS = {
    # cells of the table lorakit refuses both ways: (lorakit's error on inject, on PEFT's file), words of each
    ("mixtral", "all_linear"): ((ConfigError, "fused expert weights"), (AdapterFileError, "'target_parameters'")),
}


def _cells():
    cells = [(arch, option) for arch in ARCHS for option in CORE]
    cells += [(arch, option) for arch in LLAMA_FAMILY for option in OPTIONS if option not in CORE]
    cells += [
        ("gpt2", "lora_embedding"),
        ("gpt2", "bias_all"),
        ("bert", "all_linear_seq_cls"),
        ("roberta", "all_linear_seq_cls"),
        ("deberta_v2", "all_linear_seq_cls"),
        ("vit", "conv_patch"),
    ]
    return sorted(set(cells))


def _perturb(params, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=g) * 0.1)


def _out(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def _lk_config(kwargs: dict) -> lk.LoraConfig:
    kwargs = dict(kwargs)
    init = kwargs.pop("init_lora_weights", None)
    return lk.LoraConfig(r=4, lora_alpha=8, init=init if isinstance(init, str) else "default", **kwargs)


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.mark.parametrize("arch_name,option", _cells())
def test_peft_and_lorakit_agree(arch_name, option, tmp_path):
    arch = ARCHS[arch_name]
    kwargs = {**OPTIONS, **ARCH_SPECIFIC}[option](arch)
    inputs = arch.inputs()
    names = ["default", "other"] if option == "two_adapters" else ["default"]
    warnings.simplefilter("ignore")
    if (arch_name, option) in REFUSED_CELLS:
        (inject_error, inject_words), (load_error, load_words) = REFUSED_CELLS[(arch_name, option)]
        with pytest.raises(inject_error, match=inject_words):
            lk.inject(arch.build(), _lk_config(kwargs))
        peft.get_peft_model(arch.build(), peft.LoraConfig(r=4, **kwargs)).save_pretrained(tmp_path)
        with pytest.raises(load_error, match=load_words):
            lk.load_adapter(arch.build(), tmp_path)
        return

    # PEFT -> lorakit
    pm = peft.get_peft_model(
        arch.build(), peft.LoraConfig(**{"r": 4, "lora_alpha": 8, "init_lora_weights": False, **kwargs})
    )
    if len(names) == 2:
        pm.add_adapter("other", peft.LoraConfig(**{"r": 2, "lora_alpha": 4, "init_lora_weights": False, **kwargs}))
    _perturb([p for n, p in pm.named_parameters() if "lora_" in n or "modules_to_save" in n], seed=2)
    pm.base_model.set_adapter(names)
    pm.eval()
    reference = _out(pm, inputs)
    pm.save_pretrained(tmp_path / "peft")
    model = arch.build()
    for name in names:
        source = tmp_path / "peft" if name == "default" else tmp_path / "peft" / name
        lk.load_adapter(model, source, name)
    lk.set_active(model, names)
    assert _diff(_out(model, inputs), reference) <= TOL, "PEFT -> lorakit"

    # lorakit -> PEFT
    model = arch.build()
    for name, r in zip(names, (4, 2)):
        config = _lk_config(kwargs).replace(r=r, alpha=2.0 * r)
        lk.inject(model, config, name)
    lk.set_active(model, names)
    _perturb([p for name in names for p in adapter_parameters(model, name).values()], seed=3)
    model.eval()
    reference = _out(model, inputs)
    for name in names:
        lk.save_adapter(model, tmp_path / f"lk-{name}", name)
    pm = peft.PeftModel.from_pretrained(arch.build(), tmp_path / "lk-default")
    if len(names) == 2:
        pm.load_adapter(tmp_path / "lk-other", "other")
    pm.base_model.set_adapter(names)
    pm.eval()
    assert _diff(_out(pm, inputs), reference) <= TOL, "lorakit -> PEFT"

    # merge: lorakit merged == lorakit unmerged == PEFT merged
    lk.merge(model, names)
    assert _diff(_out(model, inputs), reference) <= TOL, "lorakit merged vs unmerged"
    peft_merged = pm.merge_and_unload(adapter_names=names)
    assert _diff(_out(model, inputs), _out(peft_merged, inputs)) <= TOL, "lorakit merged vs PEFT merged"


def test_refused_cells_raise_typed_errors_before_touching_the_model():
    cases = {
        ("llama", "dora_embedding"): lk.LoraConfig(targets=["q_proj", "embed_tokens"], use_dora=True),
        ("mixtral", "experts"): lk.LoraConfig(targets=["experts"]),
    }
    for (arch_name, option), config in cases.items():
        error, words = REFUSED[(arch_name, option)]
        model = ARCHS[arch_name].build()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(error, match=words):
            lk.inject(model, config)
        assert model.state_dict().keys() == before.keys()
        assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())


def test_peft_file_with_a_feature_lorakit_lacks_is_refused_by_field(tmp_path):
    arch = ARCHS["mixtral"]
    config = peft.LoraConfig(r=4, target_modules=["q_proj"], target_parameters=["experts.gate_up_proj"])
    peft.get_peft_model(arch.build(), config).save_pretrained(tmp_path)
    with pytest.raises(AdapterFileError, match="'target_parameters'.*LoRA on parameters"):
        lk.load_adapter(arch.build(), tmp_path)
