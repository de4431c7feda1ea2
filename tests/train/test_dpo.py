"""Preference training (DPO/IPO): the loss against a direct computation, the reference through disabled
adapters against a separately loaded base, learning on a tiny model, bad data, provenance and the registry."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from lorakit.core.config import LoraConfig
from lorakit.core.model import inject
from lorakit.data.load import load_rows
from lorakit.data.preference import collate_pairs, encode_preferences
from lorakit.train import Trainer
from lorakit.train.dpo import DPOObjective, dpo_loss
from tests.helpers import randomize_adapter, run_cli

COLOURS = ["red", "blue", "green", "black", "white", "yellow"]
PAIRS = [
    {"prompt": f"Q{i}: colour of item {i}?", "chosen": f" item {i} is {c}", "rejected": f" no idea about {i}"}
    for i, c in enumerate(COLOURS * 2)
]


def _config(base, out, **extra):
    config = {
        "base": base,
        "lora": {"r": 8, "alpha": 16},
        "data": {"max_length": 64},
        "train": {
            "objective": "dpo",
            "max_steps": 12,
            "batch_size": 4,
            "lr": 5e-3,
            "warmup_ratio": 0.0,
            "eval_every": 6,
            "save_every": 6,
            "precision": "fp32",
            "seed": 0,
        },
        "dpo": {"beta": 0.1},
        "output": str(out),
    }
    for key, value in extra.items():
        config[key] = {**config.get(key, {}), **value}
    return config


# -- the loss ------------------------------------------------------------------------------------------
LOGPS = torch.tensor([[-12.0, -15.0, -13.0, -14.5], [-20.0, -18.0, -19.0, -21.0], [-7.5, -7.5, -8.0, -6.0]])


def _direct(pc, pr, rc, rr, beta, eps, kind):
    h = (pc - rc) - (pr - rr)
    if kind == "ipo":
        return (h - 1 / (2 * beta)) ** 2
    sig = 1 / (1 + math.exp(-beta * h))
    return -(1 - eps) * math.log(sig) - eps * math.log(1 - sig)


@pytest.mark.parametrize(
    "beta,eps,kind",
    [
        (0.1, 0.0, "sigmoid"),
        (0.5, 0.0, "sigmoid"),
        (0.1, 0.2, "sigmoid"),
        (2.0, 0.1, "sigmoid"),
        (0.1, 0.0, "ipo"),
        (1.0, 0.0, "ipo"),
    ],
)
def test_dpo_loss_rewards_and_accuracy_equal_a_direct_computation(beta, eps, kind):
    pc, pr, rc, rr = (LOGPS[:, j].double() for j in range(4))
    out = dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=eps, loss_type=kind)
    for i in range(len(pc)):
        want = _direct(float(pc[i]), float(pr[i]), float(rc[i]), float(rr[i]), beta, eps, kind)
        assert float(out.losses[i]) == pytest.approx(want, rel=1e-12, abs=1e-12)
        assert float(out.chosen_rewards[i]) == pytest.approx(beta * float(pc[i] - rc[i]), rel=1e-12)
        assert float(out.rejected_rewards[i]) == pytest.approx(beta * float(pr[i] - rr[i]), rel=1e-12)
    accuracy = (out.chosen_rewards > out.rejected_rewards).tolist()
    assert accuracy == [True, False, True]  # h = 1.5, -4.0, 2.0


def _pairs(tokenizer, rows=PAIRS, max_length=64):
    return encode_preferences(load_rows(rows), tokenizer, max_length)


def test_reference_logps_equal_those_of_a_separately_loaded_base(base):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    inject(model, LoraConfig(r=8, alpha=16))
    randomize_adapter(model, scale=0.2)
    objective = DPOObjective(model, beta=0.1)
    batch = collate_pairs(_pairs(tokenizer).examples[:4], tokenizer.pad_token_id)
    _, stats = objective(**batch)
    with torch.no_grad():
        from lorakit.train.dpo import reference_logprobs

        reference = reference_logprobs(objective.tokens, **batch)  # (8,)
        fresh = AutoModelForCausalLM.from_pretrained(base).eval()
        logits = fresh(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        targets = batch["labels"][:, 1:]
        mask = targets != -100
        picked = F.log_softmax(logits.double(), -1).gather(2, targets.clamp(min=0)[..., None]).squeeze(-1)
        want = (picked * mask).sum(1)
    assert torch.allclose(reference.double(), want, rtol=1e-5, atol=1e-4)
    adapted_chosen = float(stats["chosen_logps"])
    assert abs(adapted_chosen - float(want[:4].sum())) > 1e-2  # the policy is not the reference


def test_dpo_raises_the_chosen_over_rejected_margin_and_records_its_provenance(base, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in PAIRS))
    config = _config(base, tmp_path / "run", data={"train": str(data), "eval": str(data)})
    summary = Trainer.from_config(config, progress=False).fit()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "reward_margin" in r]
    evals = [r for r in records if "eval_reward_margin" in r]
    assert len(steps) == 12 and len(evals) == 2
    for key in ("loss", "reward_margin", "reward_accuracy", "chosen_logps", "rejected_logps"):
        assert all(math.isfinite(r[key]) for r in steps), key
    assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # a fresh adapter is the reference
    assert evals[-1]["eval_reward_margin"] > 0.5 and evals[-1]["eval_reward_accuracy"] == 1.0
    assert summary["metrics"]["best_eval_loss"] < 0.5 * math.log(2)
    record = json.loads((tmp_path / "run" / "lorakit.json").read_text())
    assert record["objective"] == "dpo" and record["config"]["dpo"]["beta"] == 0.1
    sha = record["dataset"]["train"]["sha256"]
    assert len(sha) == 64

    from lorakit.registry import Registry

    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}")
    registry.add(tmp_path / "run" / "adapter", name="prefs")
    found = registry.trained_on(sha[:12])
    assert "prefs" in json.dumps(found, default=str)


def test_precomputed_reference_gives_the_same_losses(base, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in PAIRS))
    losses = []
    for precompute in (False, True):
        out = tmp_path / f"run-{precompute}"
        config = _config(
            base, out, data={"train": str(data)}, train={"max_steps": 4}, dpo={"precompute_reference": precompute}
        )
        Trainer.from_config(config, progress=False).fit()
        lines = (out / "metrics.jsonl").read_text().splitlines()
        losses.append([json.loads(line)["loss"] for line in lines])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5, abs=1e-7)


@pytest.mark.parametrize(
    "row,message",
    [
        ({"prompt": "Q", "chosen": "A"}, "missing rejected"),
        ({"prompt": "Q", "chosen": "same", "rejected": "same"}, "identical"),
        ({"prompt": "Q", "chosen": " ", "rejected": "B"}, "empty response"),
        (
            {
                "prompt": [{"role": "user", "content": "Q"}],
                "chosen": [{"role": "assistant", "content": ""}],
                "rejected": "B",
            },
            "empty response",
        ),
    ],
)
def test_bad_preference_data_exits_2_naming_file_and_line(base, tmp_path, capsys, monkeypatch, row, message):
    import yaml

    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps(PAIRS[0]) + "\n" + json.dumps(PAIRS[1]) + "\n" + json.dumps(row) + "\n")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(_config(base, tmp_path / "run", data={"train": str(data)})))
    code, _out, err = run_cli(capsys, monkeypatch, "train", str(config), "--no-progress")
    assert code == 2
    assert f"{data}:3:" in err and message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
