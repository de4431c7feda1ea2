"""The quickstart: generate the demo task, evaluate the base, train a LoRA, evaluate again, report.

``run_quickstart(out)`` uses the embedded default model; ``fast=True`` runs the same pipeline on a tiny random
model built on the default tokenizer, in seconds, to check the plumbing (its scores mean nothing).
Writes ``out/report.json``, ``out/report.md``, ``out/run/`` (adapter, checkpoints, metrics, loss.png) and
``out/data/`` (the three splits).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lorakit.core import bases
from lorakit.core.files import atomic
from lorakit.core.model import inject
from lorakit.data import encode_rows, load_rows
from lorakit.data.demo_task import FIELDS, make_demo_task, prompt_messages, reference
from lorakit.eval.drift import drift_kl
from lorakit.eval.generate import generate
from lorakit.eval.metrics import json_task_scores
from lorakit.eval.regression import general_prompts
from lorakit.train import Trainer, precision
from lorakit.train.config import load_config

REAL = {
    "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "targets": "all-linear"},
    "data": {"format": "chat", "max_length": 160},
    "train": {
        "max_steps": 60,
        "batch_size": 8,
        "grad_accum": 1,
        "lr": 1.0e-3,
        "warmup_ratio": 0.1,
        "schedule": "cosine",
        "eval_every": 30,
        "save_every": 30,
        "seed": 0,
    },
}
FAST = {
    "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "targets": "all-linear"},
    "data": {"format": "chat", "max_length": 160},
    "train": {"max_steps": 12, "batch_size": 4, "lr": 3.0e-3, "warmup_ratio": 0.1, "eval_every": 6, "save_every": 6},
}
SPLITS = {"real": (800, 48, 120), "fast": (64, 8, 12)}
GUARD = {
    "real": {"weight": 1.0, "batch_size": 2, "respond_tokens": 32, "top_k": 64},
    "fast": {"weight": 1.0, "batch_size": 2, "respond_tokens": 8, "top_k": 64},
}
"""The drift guard the quickstart trains with (``--no-drift-guard``: none):
KL to the base on the shipped guard prompts.
"""
GENERAL_SHOWN = 2


def tiny_base(directory: str | Path, seed: int = 0) -> Path:
    """A 2-layer random Llama with the default model's tokenizer and chat template, saved to ``directory``.

    Its weights are drawn wider than usual (std 0.3) so that logits can move far from uniform when trained.
    """
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    directory = Path(directory)
    if (directory / "config.json").exists():
        return directory
    tokenizer = AutoTokenizer.from_pretrained(bases.ensure_default_cached())
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        initializer_range=0.3,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with atomic.directory(directory) as staging:
        LlamaForCausalLM(config).save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return directory


def write_demo_data(out: str | Path, *, fast: bool = False) -> dict[str, Path]:
    """Write the demo task's splits (the quickstart's sizes) to ``out/data``; return their paths."""
    return make_demo_task(*SPLITS["fast" if fast else "real"]).write(Path(out) / "data")


ANSWER_SLACK = 4
"""Tokens decoded beyond the longest reference answer (its end-of-turn token and a little room)."""


def answer_budget(tokenizer, rows: list[dict]) -> int:
    """The task's known answer length: the longest reference answer of ``rows`` in tokens, plus
    :data:`ANSWER_SLACK`: every answer written in the references' form fits, and decoding stops there instead of
    running to a fixed 40 tokens for rows that never end (the base model's prose)."""
    return max(len(tokenizer(r["messages"][-1]["content"])["input_ids"]) for r in rows) + ANSWER_SLACK


def evaluate_task(
    model, tokenizer, rows: list[dict], mode: str, batch_size: int | None = None
) -> tuple[dict, list[str]]:
    """JSON triage scores of ``model`` on ``rows`` (greedy, the prompt without the answer, at most
    :func:`answer_budget` new tokens; adapters merged into a copy of the weights while decoding, batch size
    chosen for the machine unless given)."""
    with precision.autocast(mode, next(model.parameters()).device.type):
        predictions = generate(
            model,
            tokenizer,
            [prompt_messages(r) for r in rows],
            max_new_tokens=answer_budget(tokenizer, rows),
            batch_size=batch_size,
        )
    return json_task_scores(predictions, [reference(r) for r in rows], FIELDS), predictions


def run_quickstart(
    out: str | Path = "runs/quickstart",
    *,
    fast: bool = False,
    progress: bool = True,
    drift_guard: bool = True,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the whole demo; return the report (also written to ``out/report.json`` and ``out/report.md``).

    ``drift_guard`` (default) adds the KL-to-base regulariser on general prompts (:data:`GUARD`); ``False``
    trains plain LoRA.
    """
    out = Path(out)
    begin = time.perf_counter()
    if fast:
        base = str(tiny_base(bases.lorakit_home() / "models" / "tiny-demo"))
    else:
        bases.ensure_default_cached()
        base = bases.DEFAULT_BASE
    seconds = {"convert": time.perf_counter() - begin}
    task = make_demo_task(*SPLITS["fast" if fast else "real"])
    paths = task.write(out / "data")
    settings = FAST if fast else REAL
    guard = GUARD["fast" if fast else "real"] if drift_guard else None
    config = load_config(
        {
            "base": base,
            "output": str(out / "run"),
            **settings,
            "drift_guard": guard,
            "data": {**settings["data"], "train": str(paths["train"]), "eval": str(paths["val"])},
        }
    )
    model, tokenizer = bases.load(base)
    mode = precision.resolve(config.train.precision, "cpu")
    shown = general_prompts()[:GENERAL_SHOWN]
    log(f"evaluating the base model on {len(task.test)} held-out test messages ...")
    mark = time.perf_counter()
    base_scores, _ = evaluate_task(model, tokenizer, task.test, mode)
    with precision.autocast(mode, "cpu"):
        base_answers = generate(model, tokenizer, shown, max_new_tokens=48)
    seconds["eval"] = time.perf_counter() - mark

    torch.manual_seed(config.train.seed)
    inject(model, config.lora_config())
    train_rows = encode_rows(load_rows(paths["train"]), tokenizer, "chat", config.data.max_length)
    eval_rows = encode_rows(load_rows(paths["val"]), tokenizer, "chat", config.data.max_length)
    log(
        f"training a LoRA (r={config.lora['r']}, drift guard {'on' if guard else 'off'}) "
        f"for {config.train.max_steps} steps on {len(train_rows)} examples ..."
    )
    mark = time.perf_counter()
    summary = Trainer(model, tokenizer, config, train_rows, eval_rows, progress=progress).fit(
        overwrite=True
    )  # a fresh demo
    seconds["train"] = time.perf_counter() - mark

    log("evaluating the adapted model ...")
    mark = time.perf_counter()
    adapted_scores, predictions = evaluate_task(model, tokenizer, task.test, mode)
    with precision.autocast(mode, "cpu"):
        adapted_answers = generate(model, tokenizer, shown, max_new_tokens=48)
    drift = drift_kl(model, tokenizer)
    seconds["eval"] += time.perf_counter() - mark
    seconds["total"] = time.perf_counter() - begin
    report = {
        "model": base,
        "fast": fast,
        "drift_guard": guard,
        "test_rows": len(task.test),
        "train_rows": len(task.train),
        "base": base_scores,
        "adapted": adapted_scores,
        "drift_kl": drift,
        "general": [{"prompt": p, "base": b, "adapted": a} for p, b, a in zip(shown, base_answers, adapted_answers)],
        "examples": [
            {"message": r["messages"][1]["content"], "expected": r["messages"][2]["content"], "adapted": p}
            for r, p in zip(task.test[:3], predictions[:3])
        ],
        "training": summary["metrics"],
        "precision": mode,
        "threads": torch.get_num_threads(),
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "adapter": summary["adapter"],
        "loss_png": summary.get("loss_png"),
    }
    atomic.write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    atomic.write_text(out / "report.md", report_markdown(report))
    return report


def report_markdown(report: dict[str, Any]) -> str:
    """The before/after table, the drift, and the general answers side by side, as Markdown."""
    base, adapted = report["base"], report["adapted"]
    rows = [
        ("exact match", base["exact_match"], adapted["exact_match"]),
        ("valid JSON", base["json_valid"], adapted["json_valid"]),
    ]
    rows += [(f"{field} accuracy", base["field_accuracy"][field], adapted["field_accuracy"][field]) for field in FIELDS]
    lines = [
        f"# Quickstart: {report['model']}",
        "",
        f"Support-message triage to JSON, {report['test_rows']} test messages in phrasings and templates the "
        f"{report['train_rows']} training messages never use.",
        "",
        f"Drift guard: {_guard_text(report.get('drift_guard'))}.",
        "",
        "| metric | base | adapted |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {100 * b:.1f}% | {100 * a:.1f}% |" for name, b, a in rows]
    lines += [f"| drift KL(base ‖ adapted), general prompts | 0 | {report['drift_kl']:.4f} |", ""]
    s = report["seconds"]
    lines += [
        f"Time: {s['total']:.0f} s total (convert {s['convert']:.0f} s, train {s['train']:.0f} s, "
        f"eval {s['eval']:.0f} s), {report['precision']}, {report['threads']} threads.",
        "",
        "## General prompts, base vs adapted",
        "",
    ]
    for item in report["general"]:
        lines += [
            f"**{item['prompt']}**",
            "",
            "| base | adapted |",
            "|---|---|",
            f"| {_cell(item['base'])} | {_cell(item['adapted'])} |",
            "",
        ]
    return "\n".join(lines)


def _guard_text(guard: dict | None) -> str:
    if not guard:
        return "off (plain LoRA)"
    return f"on, KL(base ‖ adapted) on the shipped guard prompts with weight {guard['weight']}"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")
