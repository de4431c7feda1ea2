"""T1–T4: one LoRA training step of lorakit against PEFT, the frozen-base floor and full fine-tuning.

    .venv/bin/python bench/train_step.py [--pairs 3] [--steps 6] [--precision bf16 fp32] [--write-docs]

The reference model is the embedded SmolLM2-135M-Instruct; LoRA r=16, α=32 on q,k,v,o,gate,up,down, dropout 0,
a batch of 8 × 128 random tokens, fused AdamW for whatever trains. Every measurement runs in a fresh process
(so its peak RSS is its own), and the contenders alternate — lorakit, PEFT, floor, full FT, lorakit, … — for
``--pairs`` rounds; each ratio is the median of the per-round ratios with min–max. A process times ``--steps``
steps after two warm-up steps and reports the median.

- lorakit: ``lorakit.train.Trainer``'s own step (micro-batch, token-mean loss, clipping, optimizer step).
- PEFT: ``peft.get_peft_model`` with the same LoRA config, ``model(input_ids, labels=...).loss``, the same
  optimizer and clipping.
- floor: the base alone, every weight frozen, backward to the input embeddings only — the work any LoRA step
  must do whatever its implementation.
- full FT: every weight trains with fused AdamW (the memory reference of T4).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
KINDS = ("lorakit", "peft", "floor", "full")
BATCH, LENGTH = 8, 128


def _batch():
    import torch

    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 49152, (BATCH, LENGTH), generator=generator)


def _lorakit_step(model, tokenizer, precision: str):
    import lorakit as lk
    from lorakit.data.encode import EncodedData, Encoded
    from lorakit.train import Trainer

    lk.inject(model, lk.LoraConfig(r=16, alpha=32, dropout=0.0, targets=TARGETS))
    rows = [Encoded(ids.tolist(), ids.tolist()) for ids in _batch()]
    data = EncodedData(rows, "<random>")
    config = {"output": str(ROOT / "runs" / "bench-train-step"), "train": {
        "max_steps": 1000, "batch_size": BATCH, "lr": 1e-4, "precision": precision, "warmup_ratio": 0.0,
        "eval_every": None, "save_every": None}}
    trainer = Trainer(model, tokenizer, config, data, progress=False)
    trainer.callbacks = []
    from lorakit.train.loss import TokenLoss

    trainer.loss_fn = TokenLoss(model)
    model.train()
    return trainer._step


def _torch_step(model, params, precision: str):
    import torch

    ids = _batch()
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True) if params else None
    model.train()

    def step():
        context = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else torch.autocast("cpu", enabled=False)
        with context:
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        if optimizer is not None:
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return step


def worker(kind: str, precision: str, steps: int) -> dict:
    import torch

    import lorakit as lk

    model, tokenizer = lk.bases.load()
    if kind == "lorakit":
        step = _lorakit_step(model, tokenizer, precision)
    elif kind == "peft":
        import peft

        model = peft.get_peft_model(model, peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS))
        step = _torch_step(model, [p for p in model.parameters() if p.requires_grad], precision)
    elif kind == "floor":
        for p in model.parameters():
            p.requires_grad_(False)
        model.enable_input_require_grads()
        step = _torch_step(model, [], precision)
    else:
        step = _torch_step(model, [p for p in model.parameters() if p.requires_grad], precision)
    for _ in range(2):
        step()
    times = []
    for _ in range(steps):
        begin = time.perf_counter()
        step()
        times.append(time.perf_counter() - begin)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"kind": kind, "precision": precision, "step_s": statistics.median(times), "peak_rss_mb": peak_kib / 1024,
            "threads": torch.get_num_threads()}


def run_worker(kind: str, precision: str, steps: int) -> dict:
    command = [sys.executable, __file__, "--worker", kind, "--precision", precision, "--steps", str(steps)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if result.returncode:
        raise SystemExit(f"{kind}/{precision} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def machine() -> str:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    flags = Path("/proc/cpuinfo").read_text()
    isa = "AMX" if "amx_bf16" in flags else ("AVX512-BF16" if "avx512_bf16" in flags else "no bf16 ISA")
    return (f"{cpu} ({isa}), {os.cpu_count()} logical CPUs, load average {os.getloadavg()[0]:.1f}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'default')}")


def _ratio_cell(values: list[float], goal: float | None) -> str:
    mid = statistics.median(values)
    verdict = "" if goal is None else (" ✅" if mid <= goal else " ❌")
    return f"{mid:.2f} ({min(values):.2f}–{max(values):.2f}){verdict}"


def table(results: dict[str, list[dict]], pairs: int) -> str:
    lines = ["| figure | precision | ratio, median (min–max) | goal | absolute medians |", "|---|---|---|---|---|"]
    for precision, rounds in results.items():
        def per_round(metric: str, num: str, den: str) -> list[float]:
            return [r[num][metric] / r[den][metric] for r in rounds]

        def med(kind: str, metric: str) -> float:
            return statistics.median(r[kind][metric] for r in rounds)

        rows = [
            ("T1 step time, lorakit / PEFT", per_round("step_s", "lorakit", "peft"), 0.85,
             f"lorakit {med('lorakit', 'step_s'):.2f} s, PEFT {med('peft', 'step_s'):.2f} s"),
            ("T2 step time, lorakit / floor", per_round("step_s", "lorakit", "floor"), 1.10,
             f"floor {med('floor', 'step_s'):.2f} s, full FT {med('full', 'step_s'):.2f} s"),
            ("T3 peak RSS, lorakit / PEFT", per_round("peak_rss_mb", "lorakit", "peft"), 0.85,
             f"lorakit {med('lorakit', 'peak_rss_mb'):.0f} MB, PEFT {med('peft', 'peak_rss_mb'):.0f} MB"),
            ("T4 peak RSS, lorakit / full FT", per_round("peak_rss_mb", "lorakit", "full"), 0.70,
             f"full FT {med('full', 'peak_rss_mb'):.0f} MB, floor {med('floor', 'peak_rss_mb'):.0f} MB"),
            ("(PEFT step / floor, for reference)", per_round("step_s", "peft", "floor"), None, ""),
            ("(floor RSS / full FT, for reference)", per_round("peak_rss_mb", "floor", "full"), None, ""),
        ]
        for name, values, goal, absolute in rows:
            lines.append(f"| {name} | {precision} | {_ratio_cell(values, goal)} | {'' if goal is None else f'≤ {goal}'} | {absolute} |")
    return "\n".join(lines)


def write_docs(text: str) -> None:
    path = ROOT / "docs" / "benchmarks.md"
    doc = path.read_text()
    block = f"<!-- bench:train -->\n{text}\n<!-- /bench:train -->"
    path.write_text(re.sub(r"<!-- bench:train -->.*?<!-- /bench:train -->", lambda _: block, doc, flags=re.S))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--precision", nargs="+", default=["bf16", "fp32"], choices=["bf16", "fp32"])
    parser.add_argument("--worker", choices=KINDS)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.precision[0], args.steps)))
        return
    results: dict[str, list[dict]] = {}
    for precision in args.precision:
        results[precision] = []
        for round_ in range(args.pairs):
            measured = {kind: run_worker(kind, precision, args.steps) for kind in KINDS}
            results[precision].append(measured)
            print(f"{precision} round {round_ + 1}: " + ", ".join(
                f"{k} {v['step_s']:.2f} s {v['peak_rss_mb']:.0f} MB" for k, v in measured.items()), flush=True)
    command = "    .venv/bin/python bench/train_step.py " + " ".join(
        f"--{k} {v}" for k, v in (("pairs", args.pairs), ("steps", args.steps))) + " --precision " + " ".join(args.precision)
    text = "\n".join(["### Training step (T1–T4)", "", "```", command, "```", "", f"Machine: {machine()}.", "",
                      f"Batch {BATCH} × {LENGTH} tokens, LoRA r=16 α=32 on q,k,v,o,gate,up,down, dropout 0, fused AdamW; "
                      f"{args.pairs} rounds of fresh processes, {args.steps} timed steps each.", "",
                      table(results, args.pairs)])
    print(text)
    if args.write_docs:
        write_docs(text)


if __name__ == "__main__":
    main()
