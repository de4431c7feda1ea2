"""C1: one training step on a chat batch whose rows share a system prompt — the quickstart's own batches.

    .venv/bin/python bench/chat_step.py [--pairs 3] [--steps 5] [--write-docs]
    .venv/bin/python bench/chat_step.py --quick        # smoke run: tiny random model, one round, seconds

Eight rows of the quickstart's training split (system prompt + message → JSON answer, labels on the answer only,
right-padded), LoRA r=16 α=32 on q,k,v,o,gate,up,down, dropout 0, fp32, fused AdamW. Contenders, each in a fresh
process, alternating for ``--pairs`` rounds; each process times ``--steps`` steps after two warm-up steps
(median):

- lorakit: ``Trainer``'s step, the shared system prompt run once per batch (``train/shared_prefix.py``).
- lorakit, no sharing: the same step with the prefix run in every row (what it did before).
- PEFT: ``get_peft_model`` with the same config, ``model(input_ids, attention_mask, labels).loss``.
- floor: the frozen base alone over the full rows, backward to the input embeddings only.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from train_step import TARGETS, _load, _torch_step, machine  # noqa: E402

KINDS = ("lorakit", "lorakit-noshare", "peft", "floor")
ROWS = 8


def _rows(tokenizer, quick: bool):
    from lorakit.cli.quickstart import SPLITS
    from lorakit.data import encode_rows
    from lorakit.data.demo_task import make_demo_task
    from lorakit.data.load import load_rows

    task = make_demo_task(*SPLITS["fast" if quick else "real"])
    paths = task.write(ROOT / "runs" / "bench-chat-step" / "data")
    return encode_rows(load_rows(paths["train"]), tokenizer, "chat", 160).examples[:ROWS]


def _lorakit_step(model, tokenizer, rows, share: bool):
    import lorakit as lk
    from lorakit.data.encode import EncodedData
    from lorakit.train import Trainer, shared_prefix
    from lorakit.train.objectives import build_objective

    if not share:
        shared_prefix.MIN_SHARED = 10**9
    lk.inject(model, lk.LoraConfig(r=16, alpha=32, dropout=0.0, targets=TARGETS))
    config = {
        "output": str(ROOT / "runs" / "bench-chat-step" / "run"),
        "train": {"max_steps": 1000, "batch_size": ROWS, "lr": 1e-4, "precision": "fp32", "warmup_ratio": 0.0},
    }
    trainer = Trainer(model, tokenizer, config, EncodedData(rows, "<quickstart>"), progress=False)
    trainer.callbacks = []
    trainer.loss_fn = build_objective(trainer.config, model)
    model.train()
    return trainer._step


def worker(kind: str, steps: int, quick: bool) -> dict:
    import torch

    from lorakit.data.collate import collate

    model, tokenizer = _load(quick)
    rows = _rows(tokenizer, quick)
    batch = collate(rows, tokenizer.pad_token_id)
    if kind.startswith("lorakit"):
        step = _lorakit_step(model, tokenizer, rows, share=kind == "lorakit")
    elif kind == "peft":
        import peft

        model = peft.get_peft_model(
            model, peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS)
        )
        step = _torch_step(model, [p for p in model.parameters() if p.requires_grad], "fp32", batch)
    else:
        for p in model.parameters():
            p.requires_grad_(False)
        model.enable_input_require_grads()
        step = _torch_step(model, [], "fp32", batch)
    for _ in range(2):
        step()
    times = []
    for _ in range(steps):
        begin = time.perf_counter()
        step()
        times.append(time.perf_counter() - begin)
    tokens = int(batch["attention_mask"].sum())
    return {"kind": kind, "step_s": statistics.median(times), "tokens": tokens, "threads": torch.get_num_threads()}


def run_worker(kind: str, steps: int, quick: bool) -> dict:
    command = [sys.executable, __file__, "--worker", kind, "--steps", str(steps)] + (["--quick"] if quick else [])
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if result.returncode:
        raise SystemExit(f"{kind} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def table(rounds: list[dict]) -> str:
    def cell(num: str, den: str) -> str:
        values = [r[num]["step_s"] / r[den]["step_s"] for r in rounds]
        return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"

    def med(kind: str) -> float:
        return statistics.median(r[kind]["step_s"] for r in rounds)

    return "\n".join(
        [
            "| figure | ratio, median (min–max) | absolute medians |",
            "|---|---|---|",
            f"| C1 step, lorakit / PEFT | {cell('lorakit', 'peft')} | lorakit {med('lorakit'):.2f} s, "
            f"PEFT {med('peft'):.2f} s |",
            f"| C1 step, lorakit / lorakit without prefix sharing | {cell('lorakit', 'lorakit-noshare')} | "
            f"no sharing {med('lorakit-noshare'):.2f} s |",
            f"| C1 step, lorakit / floor (full rows) | {cell('lorakit', 'floor')} | floor {med('floor'):.2f} s |",
            f"| (no sharing / PEFT, for reference) | {cell('lorakit-noshare', 'peft')} | |",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--worker", choices=KINDS)
    parser.add_argument("--quick", action="store_true", help="tiny random model, one round of one step")
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.pairs, args.steps, args.write_docs = 1, 1, False
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps, args.quick)))
        return
    rounds = []
    for round_ in range(args.pairs):
        measured = {kind: run_worker(kind, args.steps, args.quick) for kind in KINDS}
        rounds.append(measured)
        print(f"round {round_ + 1}: " + ", ".join(f"{k} {v['step_s']:.2f} s" for k, v in measured.items()), flush=True)
    tokens = rounds[0]["lorakit"]["tokens"]
    command = (
        "bench/chat_step.py --quick" if args.quick else f"bench/chat_step.py --pairs {args.pairs} --steps {args.steps}"
    )
    text = "\n".join(
        [
            "### Training step on a chat batch with a shared system prompt (C1)",
            "",
            "```",
            f"    .venv/bin/python {command}",
            "```",
            "",
            f"Machine: {machine()}.",
            "",
            f"{ROWS} quickstart training rows ({tokens} tokens, labels on the answers), LoRA r=16 α=32 on "
            f"q,k,v,o,gate,up,down, fp32, fused AdamW; {args.pairs} rounds of fresh processes, {args.steps} timed "
            "steps each.",
            "",
            table(rounds),
        ]
    )
    print(text)
    if args.write_docs:
        path = ROOT / "docs" / "benchmarks.md"
        doc = path.read_text()
        block = f"<!-- bench:chat -->\n{text}\n<!-- /bench:chat -->"
        if "<!-- bench:chat -->" in doc:
            doc = re.sub(r"<!-- bench:chat -->.*?<!-- /bench:chat -->", lambda _: block, doc, flags=re.S)
        else:
            doc = doc.rstrip("\n") + "\n\n" + block + "\n"
        path.write_text(doc)


if __name__ == "__main__":
    main()
