"""The DPO loss against TRL's: the same tiny model, the same tokens and the same fixed reference log-probs give the
same loss, rewards, margin, accuracy and policy log-probs in lorakit and in ``trl.DPOTrainer`` (a test-only
dependency). TRL 1.x's sigmoid loss has no label smoothing and its IPO averages over tokens, so the comparison
covers the sigmoid form without smoothing; lorakit's smoothing and its summed-log-prob IPO are checked against a
direct computation in ``test_train_dpo.py``."""

from __future__ import annotations

import pytest
import torch

from lorakit.cli.quickstart import tiny_base
from lorakit.core import bases
from lorakit.core.config import LoraConfig
from lorakit.core.model import inject
from lorakit.data.load import load_rows
from lorakit.data.preference import collate_pairs, encode_preferences
from lorakit.train.dpo import DPOObjective
from tests.helpers import randomize_adapter

trl = pytest.importorskip("trl", reason="trl is a test extra: pip install -e '.[test]'")

ROWS = [
    {"prompt": f"Q{i}: colour of item {i}?", "chosen": f" item {i} is {c}", "rejected": f" no idea about item {i}"}
    for i, c in enumerate(["red", "blue", "green", "black"])
]
REFERENCE = torch.tensor([-41.0, -38.5, -44.0, -40.0, -47.5, -45.0, -43.0, -52.0], dtype=torch.float32)  # (2B,)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = str(tiny_base(bases.lorakit_home() / "models" / "tiny-demo"))
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    inject(model, LoraConfig(r=4, alpha=8))
    randomize_adapter(model, scale=0.3)  # a policy that differs from the base
    args = trl.DPOConfig(
        output_dir=str(tmp_path_factory.mktemp("trl")),
        report_to=[],
        use_cpu=True,
        bf16=False,
        loss_type=["sigmoid"],
        precompute_ref_log_probs=False,
    )
    trainer = trl.DPOTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(ROWS[:1]), processing_class=tokenizer
    )
    trainer.precompute_ref_logps = True  # take the fixed reference log-probs given with each batch
    batch = collate_pairs(encode_preferences(load_rows(ROWS), tokenizer, 64).examples, tokenizer.pad_token_id)
    return trainer, model, batch


@pytest.mark.parametrize("beta", [0.05, 0.1, 0.5, 2.0])
def test_loss_rewards_and_logps_equal_trl(setup, beta):
    trainer, model, batch = setup
    model.eval()
    pairs = len(ROWS)
    trainer.beta = beta
    trainer._metrics["eval"].clear()
    inputs = {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "completion_mask": (batch["labels"] != -100).long(),  # TRL's mask of response tokens
        "ref_chosen_logps": REFERENCE[:pairs],
        "ref_rejected_logps": REFERENCE[pairs:],
    }
    with torch.no_grad():
        want = float(trainer._compute_loss(model, inputs, return_outputs=False))
        loss, stats = DPOObjective(model, beta)(**batch, reference_logps=REFERENCE)
    logged = {k: v[-1] for k, v in trainer._metrics["eval"].items()}
    assert float(loss) / pairs == pytest.approx(want, rel=1e-5)
    assert float(stats["chosen_rewards"]) / pairs == pytest.approx(logged["rewards/chosen"], rel=1e-5)
    assert float(stats["rejected_rewards"]) / pairs == pytest.approx(logged["rewards/rejected"], rel=1e-5)
    assert float(stats["reward_margin"]) / pairs == pytest.approx(logged["rewards/margins"], rel=1e-5)
    assert float(stats["reward_accuracy"]) / pairs == pytest.approx(logged["rewards/accuracies"])
    assert float(stats["chosen_logps"]) / pairs == pytest.approx(logged["logps/chosen"], rel=1e-5)
    assert float(stats["rejected_logps"]) / pairs == pytest.approx(logged["logps/rejected"], rel=1e-5)
    assert 0 < float(stats["reward_accuracy"]) < pairs  # some pairs are ranked right, some wrong
