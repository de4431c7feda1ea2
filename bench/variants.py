"""The LoRA family on the quickstart task: LoRA, rsLoRA r=64, DoRA, LoRA+, PiSSA, AdaLoRA, QLoRA (NF4).

    .venv/bin/python bench/variants.py [--steps 80] [--out runs/bench-variants] [--write-docs]

Each variant trains in its own fresh process (so peak RSS is its own) on the quickstart's data with fixed settings
(SmolLM2-135M-Instruct, r=16, α=32, all linear layers, batch 8, 160 tokens, lr 1e-3, 10% warm-up, cosine, bf16
autocast where fast), then reports the eval loss on the validation split, exact match on the 120 held-out test
messages (greedy), trainable parameters, peak RSS and the median step time. The QLoRA process also measures Q1 (bytes of
the NF4 linear layers with their constants / the same layers in fp32) and Q1b (whole model). Q2 = QLoRA eval loss / LoRA
eval loss. ``--write-docs`` puts the table into docs/benchmarks.md between the ``bench:variants`` markers.
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
BASE_LORA = {"r": 16, "alpha": 32, "dropout": 0.0, "targets": "all-linear"}
VARIANTS = {
    "LoRA": {},
    "QLoRA (NF4)": {"quantize": "nf4"},
    "DoRA": {"lora": {"use_dora": True}},
    "PiSSA": {"lora": {"init": "pissa_niter_4"}},
    "AdaLoRA (24→16)": {"adalora": {"init_r": 24, "target_r": 16, "tinit": 0.1, "tfinal": 0.2, "delta_t": 2}},
    "LoRA+ (ratio 16)": {"train": {"loraplus_ratio": 16}},
    "rsLoRA r=64": {"lora": {"r": 64, "alpha": 16, "use_rslora": True}},
}


TRAIN = {"batch_size": 8, "grad_accum": 1, "lr": 1.0e-3, "warmup_ratio": 0.1, "schedule": "cosine", "seed": 0}
DATA = {"format": "chat", "max_length": 160}


def run_config(variant: str, steps: int, data: dict[str, Path], out: Path) -> dict:
    change = VARIANTS[variant]
    train = {**TRAIN, "max_steps": steps, "eval_every": None, "save_every": None, **change.get("train", {})}
    config = {
        "base": "smollm2-135m-instruct",
        "output": str(out),
        "lora": {**BASE_LORA, **change.get("lora", {})},
        "data": {**DATA, "train": str(data["train"]), "eval": str(data["val"])},
        "train": train,
    }
    if "quantize" in change:
        config["quantize"] = change["quantize"]
    if "adalora" in change:  # tinit/tfinal given as fractions of the run
        ada = change["adalora"]
        config["adalora"] = {**ada, "tinit": int(ada["tinit"] * steps), "tfinal": int(ada["tfinal"] * steps)}
    return config


def one_variant(variant: str, steps: int, test_rows: int, out: Path) -> dict:
    """Train and evaluate one variant in this process; return its row."""
    import torch

    import lorakit as lk
    from lorakit.cli.quickstart import SPLITS, evaluate_task
    from lorakit.core import quant
    from lorakit.data.demo_task import make_demo_task
    from lorakit.train import Trainer, precision

    task = make_demo_task(*SPLITS["real"])
    paths = task.write(out / "data")
    trainer = Trainer.from_config(run_config(variant, steps, paths, out / "run"), progress=False)
    model = trainer.model
    trainable = lk.trainable_summary(model).trainable
    row = {"variant": variant, "trainable": trainable}
    if "quantize" in VARIANTS[variant]:
        quantised, fp32 = quant.quantized_footprint(model)
        row["q1"] = quantised / fp32
        held, full = quant.base_footprint(model)
        row["q1b"] = held / full
    summary = trainer.fit()
    row["eval_loss"] = summary["metrics"]["best_eval_loss"]  # the single evaluation, after the last step
    row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    steps_s = [
        json.loads(line)["step_s"]
        for line in (out / "run" / "metrics.jsonl").read_text().splitlines()
        if "step_s" in line
    ]
    row["step_s"] = statistics.median(steps_s[3:] or steps_s)
    row["completed"] = summary["completed"]
    if "quantize" not in VARIANTS[variant]:
        lk.merge(model)  # exact for every float variant; decoding then costs what the base costs
    row["exact_match"] = row["json_valid"] = None
    if test_rows:
        scores, _ = evaluate_task(model, trainer.tokenizer, task.test[:test_rows], precision.resolve("auto", "cpu"))
        row["exact_match"], row["json_valid"] = scores["exact_match"], scores["json_valid"]
    row["threads"] = torch.get_num_threads()
    return row


def footprint() -> str:
    """Q1 and Q1b alone: the default model loaded as NF4, no training."""
    import lorakit as lk
    from lorakit.core import quant

    model, _ = lk.bases.load("smollm2-135m-instruct", quantize="nf4")
    quantised, fp32 = quant.quantized_footprint(model)
    held, full = quant.base_footprint(model)
    return (
        f"- **Q1** NF4 linear layers with double-quantised constants ÷ the same layers in fp32: "
        f"**{quantised / fp32:.4f}** "
        f"({quantised / 2**20:.1f} MiB vs {fp32 / 2**20:.1f} MiB; goal ≤ 0.135).\n"
        f"- **Q1b** whole base (embeddings and norms stay fp32) NF4 ÷ fp32: **{held / full:.3f}** "
        f"({held / 2**20:.1f} MiB vs {full / 2**20:.1f} MiB).\n"
    )


def checkpointing_step(variant: str, checkpointing: bool) -> dict:
    """Peak RSS of one forward+backward (batch 8 × 160 tokens, bf16 autocast) over the RSS before it."""
    import torch

    import lorakit as lk
    from lorakit.train import precision

    model, _ = lk.bases.load("smollm2-135m-instruct", quantize=VARIANTS[variant].get("quantize"))
    lk.inject(model, lk.LoraConfig(**{**BASE_LORA, **VARIANTS[variant].get("lora", {})}))
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    ids = torch.randint(0, 49152, (8, 160), generator=torch.Generator().manual_seed(0))
    before = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    with precision.autocast(precision.resolve("auto", "cpu"), "cpu"):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"variant": variant, "checkpointing": checkpointing, "step_mb": peak - before, "peak_mb": peak}


def checkpointing_table() -> str:
    rows = []
    for variant in ("LoRA", "DoRA", "QLoRA (NF4)"):
        for flag in (False, True):
            result = subprocess.run(
                [sys.executable, __file__, "--checkpointing-step", variant] + (["--on"] if flag else []),
                capture_output=True,
                text=True,
                cwd=ROOT,
            )
            found = [line[4:] for line in result.stdout.splitlines() if line.startswith("ROW ")]
            if not found:
                print(f"{variant}: failed\n{result.stderr[-2000:]}", file=sys.stderr)
                continue
            rows.append(json.loads(found[0]))
    lines = ["| variant | memory of one step (peak − before) without → with checkpointing | ratio |", "|---|---:|---:|"]
    for variant in ("LoRA", "DoRA", "QLoRA (NF4)"):
        pair = [r for r in rows if r["variant"] == variant]
        if len(pair) == 2:
            off, on = sorted(pair, key=lambda r: r["checkpointing"])
            lines.append(
                f"| {variant} | {off['step_mb']:.0f} MB → {on['step_mb']:.0f} MB | "
                f"{on['step_mb'] / off['step_mb']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def nf4_merge(adapter: str) -> str:
    """Merge a trained adapter into the NF4 default model, kept float and re-quantised: the output change each time."""
    import lorakit as lk
    from lorakit.core.merge_quantized import merge_quantized, sample_batch

    lines = ["| merge into NF4 | max abs Δlogit | mean KL (nats/token) |", "|---|---:|---:|"]
    for requantize in (False, True):
        model, _ = lk.bases.load("smollm2-135m-instruct", quantize="nf4")
        lk.load_adapter(model, adapter)
        report = merge_quantized(model, requantize=requantize, sample=sample_batch(model, batch=4, length=64))
        form = "re-quantised to NF4" if requantize else "kept in fp32"
        lines.append(
            f"| {form} ({report.quantized_layers} layers) | {report.max_abs_logit_delta:.4g} | {report.mean_kl:.3g} |"
        )
    return "\n".join(lines) + "\n"


def machine() -> str:
    import torch

    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{cpu}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"load average {load:.1f}"
    )


def table(rows: list[dict], steps: int, test_rows: int, command: str, where: str) -> str:
    lora = next((r for r in rows if r["variant"] == "LoRA"), None)
    lines = [
        f"Command: `{command}` — {steps} optimizer steps per variant, each in a fresh process; exact match on "
        f"{test_rows} held-out test messages. Machine: {where}.",
        "",
        "| variant | exact match | eval loss | trainable params | peak RSS | step time | step ÷ LoRA |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]

    def ratio(r: dict) -> str:
        return f"{r['step_s'] / lora['step_s']:.2f}" if lora else "—"

    for r in rows:
        match = "not scored" if r["exact_match"] is None else f"{100 * r['exact_match']:.1f}%"
        lines.append(
            f"| {r['variant']} | {match} | {r['eval_loss']:.4f} | {r['trainable']:,} | "
            f"{r['peak_rss_mb']:.0f} MB | {r['step_s']:.2f} s | {ratio(r)} |"
        )
    qlora = next((r for r in rows if "q1" in r), None)
    if qlora is not None and lora is not None:
        q2 = qlora["eval_loss"] / lora["eval_loss"]
        lines += [
            "",
            f"- **Q1** NF4 linear layers with double-quantised constants ÷ the same layers in fp32: "
            f"**{qlora['q1']:.4f}** (goal ≤ 0.135; {'met' if qlora['q1'] <= 0.135 else 'missed'}).",
            f"- **Q1b** whole base (embeddings and norms stay fp32) NF4 ÷ fp32: **{qlora['q1b']:.3f}**.",
            f"- **Q2** QLoRA eval loss ÷ LoRA eval loss: **{q2:.4f}** "
            f"(goal ≤ 1.05; {'met' if q2 <= 1.05 else 'missed'}).",
        ]
    return "\n".join(lines) + "\n"


def write_docs(text: str) -> None:
    path = ROOT / "docs" / "benchmarks.md"
    content = path.read_text()
    block = f"<!-- bench:variants -->\n### Variants on the quickstart task\n\n{text}<!-- /bench:variants -->"
    content = re.sub(r"<!-- bench:variants -->.*?<!-- /bench:variants -->", lambda _: block, content, flags=re.S)
    path.write_text(content)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument(
        "--test-rows", type=int, default=120, help="held-out test messages scored by exact match (0: skip)"
    )
    parser.add_argument("--out", default="runs/bench-variants")
    parser.add_argument("--only", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset, in table order")
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument(
        "--checkpointing", action="store_true", help="peak memory of one step without/with gradient checkpointing"
    )
    parser.add_argument("--checkpointing-step", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--on", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--nf4-merge", metavar="ADAPTER", help="merge a trained adapter into the NF4 model and report the change"
    )
    parser.add_argument("--footprint-only", action="store_true", help="print Q1/Q1b for the NF4 default model and stop")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.checkpointing_step:
        print("ROW " + json.dumps(checkpointing_step(args.checkpointing_step, args.on)), flush=True)
        return
    if args.checkpointing:
        print(checkpointing_table())
        return
    if args.nf4_merge:
        print(nf4_merge(args.nf4_merge))
        return
    if args.footprint_only:
        print(footprint())
        return
    if args.only:
        row = one_variant(
            args.only, args.steps, args.test_rows, out / re.sub(r"\W+", "-", args.only).strip("-").lower()
        )
        print("ROW " + json.dumps(row), flush=True)
        return
    rows = []
    for variant in args.variants.split(","):
        started = time.perf_counter()
        result = subprocess.run(
            [
                sys.executable,
                __file__,
                "--only",
                variant,
                "--steps",
                str(args.steps),
                "--test-rows",
                str(args.test_rows),
                "--out",
                str(out),
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        found = [line[4:] for line in result.stdout.splitlines() if line.startswith("ROW ")]
        if result.returncode != 0 or not found:
            print(f"{variant}: failed\n{result.stderr[-3000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(found[0]))
        print(f"{variant}: {rows[-1]} ({time.perf_counter() - started:.0f} s)", flush=True)
        (out / "rows.json").write_text(json.dumps(rows, indent=2))
    command = "python bench/variants.py " + " ".join(a for a in sys.argv[1:])
    text = table(rows, args.steps, args.test_rows, command.strip(), machine())
    (out / "variants.md").write_text(text)
    print(text)
    if args.write_docs:
        write_docs(text)


if __name__ == "__main__":
    main()
