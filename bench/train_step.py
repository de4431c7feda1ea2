"""T1–T5: one LoRA training step of lorakit against PEFT, the frozen-base floor and full fine-tuning; and
evaluation's generation, adapted against the base.

    .venv/bin/python bench/train_step.py [--pairs 3] [--steps 6] [--precision bf16 fp32] [--write-docs]
    .venv/bin/python bench/train_step.py --quick        # smoke run: tiny random model, one round, seconds

The reference model is the embedded SmolLM2-135M-Instruct; LoRA r=16, α=32 on q,k,v,o,gate,up,down, dropout 0,
a batch of 8 × 128 random tokens, fused AdamW for whatever trains. Every measurement runs in a fresh process
(so its peak RSS is its own), and the contenders alternate — lorakit, PEFT, floor, full FT, lorakit, … — for
``--pairs`` rounds; each ratio is the median of the per-round ratios with min–max. A process times ``--steps``
steps after two warm-up steps and reports the median.

- lorakit: ``lorakit.train.Trainer``'s own step (micro-batch, token-mean loss, clipping, optimizer step).
- lorakit under bf16 stores its frozen linear weights once in bf16 (``train/precision.py``), as the trainer does.
- PEFT: ``peft.get_peft_model`` with the same LoRA config, ``model(input_ids, labels=...).loss``, the same
  optimizer and clipping; its base stays fp32 under autocast.
- PEFT, base in bf16 (bf16 rows only): the base loaded as bf16, as PEFT's users do; PEFT keeps its adapters fp32
  (``autocast_adapter_dtype``), training under the same autocast.
- floor: the base alone, every weight frozen, backward to the input embeddings only — the work any LoRA step
  must do whatever its implementation.
- full FT: every weight trains with fused AdamW (the memory reference of T4).

T5 runs in one process: the quickstart's evaluation prompts decoded greedily by ``lorakit.eval.generate`` with a
random adapter (merged into a copy of the weights, the evaluation path), unmerged, and inside ``lk.disabled``
(the base, i.e. merged speed), alternating for ``--pairs`` rounds. Speed is decode tokens per second: rows ×
decode steps the model ran (one-token forwards), divided by the wall time of the whole ``generate`` call.
"""

from __future__ import annotations

import argparse
import contextlib
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
KINDS = ("lorakit", "peft", "peft-bf16", "floor", "full")
BATCH, LENGTH = 8, 128
QUICK = {"batch": 2, "length": 16, "steps": 1, "pairs": 1, "prompts": 4, "new_tokens": 4}
T5_PROMPTS, T5_NEW_TOKENS = 48, 40


def _load(quick: bool):
    import lorakit as lk

    if quick:
        from lorakit.cli.quickstart import tiny_base

        return lk.bases.load(str(tiny_base(lk.bases.lorakit_home() / "models" / "tiny-demo")))
    return lk.bases.load()


def _batch():
    import torch

    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 49152, (BATCH, LENGTH), generator=generator)


def kinds_for(precision: str) -> tuple[str, ...]:
    return KINDS if precision == "bf16" else tuple(k for k in KINDS if k != "peft-bf16")


def _lorakit_step(model, tokenizer, precision: str):
    import lorakit as lk
    from lorakit.data.encode import Encoded, EncodedData
    from lorakit.train import Trainer

    lk.inject(model, lk.LoraConfig(r=16, alpha=32, dropout=0.0, targets=TARGETS))
    rows = [Encoded(ids.tolist(), ids.tolist()) for ids in _batch()]
    data = EncodedData(rows, "<random>")
    config = {
        "output": str(ROOT / "runs" / "bench-train-step"),
        "train": {
            "max_steps": 1000,
            "batch_size": BATCH,
            "lr": 1e-4,
            "precision": precision,
            "warmup_ratio": 0.0,
            "eval_every": None,
            "save_every": None,
        },
    }
    trainer = Trainer(model, tokenizer, config, data, progress=False)
    trainer.callbacks = []
    from lorakit.train.objectives import build_objective

    trainer.loss_fn = build_objective(trainer.config, model)  # what fit() uses, without its output directory
    model.train()
    return trainer._step


def _torch_step(model, params, precision: str, batch: dict | None = None):
    """One optimizer step of a plain torch/PEFT model on ``batch`` (default: the random batch as its own labels)."""
    import torch

    if batch is None:
        ids = _batch()
        batch = {"input_ids": ids, "labels": ids}
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True) if params else None
    model.train()

    def step():
        context = (
            torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else torch.autocast("cpu", enabled=False)
        )
        with context:
            loss = model(**batch, use_cache=False).loss
        loss.backward()
        if optimizer is not None:
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return step


def worker(kind: str, precision: str, steps: int, quick: bool) -> dict:
    import torch

    model, tokenizer = _load(quick)
    if kind == "lorakit":
        step = _lorakit_step(model, tokenizer, precision)
    elif kind.startswith("peft"):
        import peft

        if kind == "peft-bf16":
            model.to(torch.bfloat16)
        model = peft.get_peft_model(
            model, peft.LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS)
        )
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
    return {
        "kind": kind,
        "precision": precision,
        "step_s": statistics.median(times),
        "peak_rss_mb": peak_kib / 1024,
        "threads": torch.get_num_threads(),
    }


def t5_worker(pairs: int, quick: bool) -> list[dict]:
    """Decode tokens/s of evaluation generation per round: adapted (merged copy), adapted unmerged, base."""
    import torch

    import lorakit as lk
    from lorakit.cli.quickstart import SPLITS
    from lorakit.core.model import lora_layers
    from lorakit.data.demo_task import make_demo_task, prompt_messages
    from lorakit.eval.generate import generate

    model, tokenizer = _load(quick)
    lk.inject(model, lk.LoraConfig(r=16, alpha=32, dropout=0.0, targets=TARGETS))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, layer in lora_layers(model):
            layer.lora_B["default"].copy_(torch.randn(layer.lora_B["default"].shape, generator=generator) * 1e-3)
    count = QUICK["prompts"] if quick else T5_PROMPTS
    prompts = [prompt_messages(r) for r in make_demo_task(*SPLITS["real"]).test[:count]]
    new_tokens = QUICK["new_tokens"] if quick else T5_NEW_TOKENS
    decoded = [0]

    def count_decode(_module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and ids.shape[1] == 1:
            decoded[0] += ids.shape[0]

    model.register_forward_pre_hook(count_decode, with_kwargs=True)

    def speed(context, merge: bool) -> float:
        decoded[0] = 0
        begin = time.perf_counter()
        with context:
            generate(model, tokenizer, prompts, max_new_tokens=new_tokens, merge=merge)
        return decoded[0] / (time.perf_counter() - begin)

    generate(model, tokenizer, prompts[:2], max_new_tokens=2)  # warm-up
    rounds = []
    for _ in range(pairs):
        rounds.append(
            {
                "adapted": speed(contextlib.nullcontext(), True),
                "unmerged": speed(contextlib.nullcontext(), False),
                "base": speed(lk.disabled(model), True),
            }
        )
    return rounds


def run_worker(kind: str, precision: str, steps: int, quick: bool) -> dict:
    command = [sys.executable, __file__, "--worker", kind, "--precision", precision, "--steps", str(steps)]
    command += ["--quick"] if quick else []
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if result.returncode:
        raise SystemExit(f"{kind}/{precision} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _t5(pairs: int, quick: bool) -> list[dict]:
    command = [sys.executable, __file__, "--worker", "t5", "--pairs", str(pairs)] + (["--quick"] if quick else [])
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if result.returncode:
        raise SystemExit(f"T5 failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def machine() -> str:
    import torch

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    flags = Path("/proc/cpuinfo").read_text()
    isa = "AMX" if "amx_bf16" in flags else ("AVX512-BF16" if "avx512_bf16" in flags else "no bf16 ISA")
    return (
        f"{cpu} ({isa}), {os.cpu_count()} logical CPUs, load average {os.getloadavg()[0]:.1f}, "
        f"torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'default')}"
    )


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
            (
                "T1 step time, lorakit / PEFT",
                per_round("step_s", "lorakit", "peft"),
                0.85,
                f"lorakit {med('lorakit', 'step_s'):.2f} s, PEFT {med('peft', 'step_s'):.2f} s",
            ),
            *(
                [
                    (
                        "T1 step time, lorakit / PEFT with base stored in bf16",
                        per_round("step_s", "lorakit", "peft-bf16"),
                        0.85,
                        f"PEFT (bf16 base) {med('peft-bf16', 'step_s'):.2f} s, "
                        f"{med('peft-bf16', 'peak_rss_mb'):.0f} MB",
                    )
                ]
                if "peft-bf16" in rounds[0]
                else []
            ),
            (
                "T2 step time, lorakit / floor",
                per_round("step_s", "lorakit", "floor"),
                1.05,
                f"floor {med('floor', 'step_s'):.2f} s, full FT {med('full', 'step_s'):.2f} s",
            ),
            (
                "T3 peak RSS, lorakit / PEFT",
                per_round("peak_rss_mb", "lorakit", "peft"),
                0.75,
                f"lorakit {med('lorakit', 'peak_rss_mb'):.0f} MB, PEFT {med('peft', 'peak_rss_mb'):.0f} MB",
            ),
            (
                "T4 peak RSS, lorakit / full FT",
                per_round("peak_rss_mb", "lorakit", "full"),
                0.65,
                f"full FT {med('full', 'peak_rss_mb'):.0f} MB, floor {med('floor', 'peak_rss_mb'):.0f} MB",
            ),
            ("(PEFT step / floor, for reference)", per_round("step_s", "peft", "floor"), None, ""),
            ("(floor RSS / full FT, for reference)", per_round("peak_rss_mb", "floor", "full"), None, ""),
        ]
        for name, values, goal, absolute in rows:
            lines.append(
                f"| {name} | {precision} | {_ratio_cell(values, goal)} | "
                f"{'' if goal is None else f'≤ {goal}'} | {absolute} |"
            )
    return "\n".join(lines)


def t5_table(rounds: list[dict]) -> str:
    def ratios(num: str) -> list[float]:
        return [r[num] / r["base"] for r in rounds]

    def med(kind: str) -> float:
        return statistics.median(r[kind] for r in rounds)

    def cell(values: list[float], goal: float | None) -> str:
        mid = statistics.median(values)
        verdict = "" if goal is None else (" ✅" if mid >= goal else " ❌")
        return f"{mid:.2f} ({min(values):.2f}–{max(values):.2f}){verdict}"

    return "\n".join(
        [
            "| figure | ratio, median (min–max) | goal | absolute medians |",
            "|---|---|---|---|",
            f"| T5 eval decode tokens/s, adapted (merged copy) / base | {cell(ratios('adapted'), 0.95)} | ≥ 0.95 | "
            f"adapted {med('adapted'):.0f} tok/s, base {med('base'):.0f} tok/s |",
            f"| (adapted unmerged / base, for reference) | {cell(ratios('unmerged'), None)} | | "
            f"unmerged {med('unmerged'):.0f} tok/s |",
        ]
    )


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
    parser.add_argument("--worker", choices=(*KINDS, "t5"))
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: tiny random model, batch 2 × 16, one round of one step, bf16 only (numbers mean nothing)",
    )
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    if args.quick:
        global BATCH, LENGTH
        BATCH, LENGTH = QUICK["batch"], QUICK["length"]
        args.pairs, args.steps, args.write_docs = QUICK["pairs"], QUICK["steps"], False
        args.precision = args.precision if args.worker else ["bf16"]
    if args.worker == "t5":
        print(json.dumps(t5_worker(args.pairs, args.quick)))
        return
    if args.worker:
        print(json.dumps(worker(args.worker, args.precision[0], args.steps, args.quick)))
        return
    results: dict[str, list[dict]] = {}
    for precision in args.precision:
        results[precision] = []
        for round_ in range(args.pairs):
            measured = {kind: run_worker(kind, precision, args.steps, args.quick) for kind in kinds_for(precision)}
            results[precision].append(measured)
            print(
                f"{precision} round {round_ + 1}: "
                + ", ".join(f"{k} {v['step_s']:.2f} s {v['peak_rss_mb']:.0f} MB" for k, v in measured.items()),
                flush=True,
            )
    command = (
        "    .venv/bin/python bench/train_step.py "
        + " ".join(f"--{k} {v}" for k, v in (("pairs", args.pairs), ("steps", args.steps)))
        + " --precision "
        + " ".join(args.precision)
    )
    command = "    .venv/bin/python bench/train_step.py --quick" if args.quick else command
    t5 = _t5(args.pairs, args.quick)
    text = "\n".join(
        [
            "### Training step (T1–T4) and evaluation generation (T5)",
            "",
            "```",
            command,
            "```",
            "",
            f"Machine: {machine()}.",
            "",
            f"Batch {BATCH} × {LENGTH} tokens, LoRA r=16 α=32 on q,k,v,o,gate,up,down, dropout 0, fused AdamW; "
            f"{args.pairs} rounds of fresh processes, {args.steps} timed steps each.",
            "",
            table(results, args.pairs),
            "",
            f"T5: {QUICK['prompts'] if args.quick else T5_PROMPTS} quickstart test prompts, greedy, at most "
            f"{QUICK['new_tokens'] if args.quick else T5_NEW_TOKENS} new tokens, batch size chosen by "
            f"`generate`, {args.pairs} alternating rounds in one process.",
            "",
            t5_table(t5),
        ]
    )
    print(text)
    if args.write_docs:
        write_docs(text)


if __name__ == "__main__":
    main()
