"""Each variant trains from a config switch through the real Trainer and saves a loadable PEFT-layout adapter."""

from __future__ import annotations

import pytest
import torch

import lorakit as lk
from lorakit.cli.quickstart import tiny_base
from lorakit.core import quant
from lorakit.data.demo_task import make_demo_task
from lorakit.train import Trainer

MODULES = 14  # 7 projections × 2 blocks of the tiny base


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return tiny_base(tmp_path_factory.mktemp("tiny") / "base")


def _run(tmp_path, tiny_dir, **changes):
    paths = make_demo_task(16, 4, 4).write(tmp_path / "data")
    config = {
        "base": str(tiny_dir),
        "output": str(tmp_path / "run"),
        "lora": {"r": 4, "alpha": 8, "targets": "all-linear", **changes.pop("lora", {})},
        "data": {"train": str(paths["train"]), "eval": str(paths["val"]), "max_length": 96},
        "train": {
            "max_steps": 4,
            "batch_size": 2,
            "lr": 1e-2,
            "eval_every": None,
            "save_every": None,
            "precision": "fp32",
            **changes.pop("train", {}),
        },
        **changes,
    }
    trainer = Trainer.from_config(config, progress=False)
    summary = trainer.fit()
    return trainer, lk.read_adapter(summary["adapter"])


def test_qlora_with_dora_8bit_adamw_and_checkpointing_trains_and_reloads(tmp_path, tiny_dir):
    trainer, files = _run(
        tmp_path,
        tiny_dir,
        quantize="nf4",
        lora={"use_dora": True},
        train={"optim": "adamw_8bit", "gradient_checkpointing": True},
    )
    model = trainer.model
    assert quant.is_quantized(model.model.layers[0].mlp.up_proj.base_layer)
    assert type(trainer.optimizer).__name__ == "AdamW8bit"
    assert files.config.use_dora and any(k.endswith("lora_magnitude_vector") for k in files.tensors)
    float_model, _ = lk.bases.load(str(tiny_dir))
    assert files.base_fingerprint == lk.bases.fingerprint(float_model)
    reloaded, _ = lk.bases.load(str(tiny_dir), quantize="nf4")
    lk.load_adapter(reloaded, files.path)
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    model.eval()
    with torch.no_grad():
        assert (reloaded(input_ids=ids).logits - model(input_ids=ids).logits).abs().max() <= 1e-4


def test_adalora_switch_saves_plain_lora_within_the_budget(tmp_path, tiny_dir):
    _, files = _run(tmp_path, tiny_dir, adalora={"init_r": 6, "target_r": 2, "tinit": 1, "tfinal": 1, "delta_t": 1})
    a_keys = [k for k in files.tensors if k.endswith("lora_A.weight")]
    assert len(a_keys) == MODULES
    b = {k: files.tensors[k.replace("lora_A", "lora_B")] for k in a_keys}
    kept = sum(files.tensors[k].shape[0] for k in a_keys if b[k].abs().sum() > 0)  # fully pruned: a zero rank-1 pair
    assert 0 < kept <= 2 * MODULES
    assert files.raw_config["peft_type"] == "LORA" and files.config.rank_pattern


def test_pissa_switch_with_nf4_quantises_the_residual_and_saves_against_the_float_base(tmp_path, tiny_dir):
    trainer, files = _run(tmp_path, tiny_dir, quantize="nf4", lora={"init": "pissa_niter_2"})
    assert quant.is_quantized(trainer.model.model.layers[1].self_attn.q_proj.base_layer)
    assert files.config.r == 8 and files.config.init == "default"
    float_model, _ = lk.bases.load(str(tiny_dir))
    assert files.base_fingerprint == lk.bases.fingerprint(float_model)
    lk.load_adapter(float_model, files.path)
