"""The training loop on a tiny model: loss falls, outputs and provenance, NaN guard, MLflow, early stopping."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from lorakit.core.errors import TrainingError
from lorakit.train import Callback, Trainer, train
from lorakit.train.checkpoint import list_checkpoints

ROWS = [
    {"prompt": f"Q{i}: colour of item {i}?", "completion": f" item {i} is {c}"}
    for i, c in enumerate(["red", "blue", "green", "black"] * 2)
]


def _config(base, out, **train):
    settings = {
        "max_steps": 24,
        "batch_size": 4,
        "lr": 1e-2,
        "warmup_ratio": 0.0,
        "eval_every": 8,
        "save_every": 8,
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
    }


def test_tiny_model_trains_and_its_loss_falls(base, tmp_path):
    summary = train(_config(base, tmp_path / "run"), train_data=ROWS, eval_data=ROWS[:4], progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    evals = [r["eval_loss"] for r in records if "eval_loss" in r]
    assert len(losses) == 24 and len(evals) == 3
    assert sum(losses[-4:]) / 4 < 0.5 * sum(losses[:4]) / 4
    assert evals[-1] < evals[0]
    assert summary["completed"] and summary["metrics"]["best_eval_loss"] == pytest.approx(min(evals))
    out = tmp_path / "run"
    for path in ("adapter/adapter_model.safetensors", "best/adapter_config.json", "loss.png", "lorakit.json"):
        assert (out / path).exists(), path
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step-000008", "step-000016", "step-000024"]
    record = json.loads((out / "lorakit.json").read_text())
    assert record["base"]["fingerprint"] and record["dataset"]["train"]["rows"] == len(ROWS)
    assert record["config"]["train"]["lr"] == 1e-2 and record["metrics"]["steps"] == 24 and record["wall_seconds"] > 0
    meta = json.loads((out / "adapter" / "lorakit.json").read_text())
    assert meta["training"]["dataset"]["train"]["target_tokens"] > 0
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_checkpoints_keep_the_last_k(base, tmp_path):
    train(
        _config(base, tmp_path / "run", max_steps=6, save_every=1, keep_checkpoints=2, eval_every=None),
        train_data=ROWS,
        progress=False,
    )
    assert [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")] == ["step-000005", "step-000006"]


class Poison(Callback):
    """Turns one B matrix into NaN after ``step``, as a diverging run would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, trainer, metrics):
        if metrics["step"] == self.step:
            with torch.no_grad():
                next(p for n, p in trainer.model.named_parameters() if "down_proj.lora_B" in n).fill_(math.nan)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(base, tmp_path):
    out = tmp_path / "run"
    trainer = Trainer.from_config(
        _config(base, out, save_every=2, eval_every=None), train_data=ROWS, callbacks=[Poison(3)], progress=False
    )
    with pytest.raises(TrainingError, match=r"step 4: the loss is nan; .*last good checkpoint is .*step-000002"):
        trainer.fit()
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step-000002"]
    saved = load_file(out / "checkpoints" / "step-000002" / "adapter" / "adapter_model.safetensors")
    assert all(torch.isfinite(t).all() for t in saved.values())
    assert not (out / "adapter").exists()


class Penalty(Callback):
    """A regulariser through the loss_term hook: pull every B towards zero."""

    def loss_term(self, trainer):
        return 100.0 * sum((p**2).sum() for n, p in trainer.model.named_parameters() if "lora_B" in n)


def test_loss_term_hook_changes_the_optimisation(base, tmp_path):
    plain = Trainer.from_config(
        _config(base, tmp_path / "a", max_steps=6, eval_every=None), train_data=ROWS, progress=False
    )
    plain.fit()
    held = Trainer.from_config(
        _config(base, tmp_path / "b", max_steps=6, eval_every=None),
        train_data=ROWS,
        callbacks=[Penalty()],
        progress=False,
    )
    held.fit()
    norm = lambda t: sum(float((p**2).sum()) for n, p in t.model.named_parameters() if "lora_B" in n)  # noqa: E731
    assert norm(held) < 0.5 * norm(plain)


def test_early_stopping_when_eval_loss_stops_improving(base, tmp_path):
    contradicting = [{"prompt": r["prompt"], "completion": r["completion"][::-1]} for r in ROWS]
    config = _config(base, tmp_path / "run", max_steps=40, eval_every=1, early_stopping_patience=2)
    summary = train(config, train_data=ROWS, eval_data=contradicting, progress=False)
    assert not summary["completed"] and summary["metrics"]["steps"] < 40
    record = json.loads((tmp_path / "run" / "lorakit.json").read_text())
    assert record["early_stopped"] and record["metrics"]["steps"] == summary["metrics"]["steps"]


def test_eval_fraction_holds_out_rows(base):
    from transformers import AutoTokenizer

    from lorakit.train.config import load_config
    from lorakit.train.prepare import prepare_data

    config = load_config(_config(base, "unused"), ["data.eval_fraction=0.25"])
    train_data, eval_data = prepare_data(config, AutoTokenizer.from_pretrained(base), ROWS * 2)
    assert (len(train_data), len(eval_data)) == (12, 4) and train_data.rows == 12


def test_mlflow_tracking_in_a_local_sqlite_file(base, tmp_path, monkeypatch):
    """MLflow 3 refuses its plain-directory backend by default; a local SQLite file is its local store now."""
    import mlflow

    monkeypatch.chdir(tmp_path)  # MLflow puts artifacts under ./mlruns of a SQLite store

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = _config(base, tmp_path / "run", max_steps=4, eval_every=2)
    config["tracking"] = {"mlflow": uri, "experiment": "tiny"}
    train(config, train_data=ROWS, eval_data=ROWS[:2], progress=False)
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["tiny"], output_format="list")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    client = mlflow.MlflowClient(uri)
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "loss")] == [1, 2, 3, 4]
    assert len(client.get_metric_history(runs[0].info.run_id, "eval_loss")) == 2
    assert runs[0].data.params["train.lr"] == "0.01"
