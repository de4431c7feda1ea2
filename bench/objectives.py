"""Training objectives on the default model: plain vs drift-guarded quickstart, and a DPO run.

    .venv/bin/python bench/objectives.py [--pairs 3] [--dpo-steps 40] [--out runs/bench-objectives]
    .venv/bin/python bench/objectives.py --quick     # smoke run of every row on the tiny random model (seconds;
                                                     # its numbers mean nothing)

Every measurement runs in its own fresh process (so peak RSS is its own); plain and guarded quickstarts
alternate (A B A B ...). Quickstart rows: exact match on the 120 held-out test messages, drift KL(base ‖
adapted) on the 32 eval prompts (none of them is a guard prompt), training seconds, peak RSS; ratios guarded /
plain per pair, median with min–max. DPO row: the demo preference set (256 train pairs, 64 held-out pairs),
preference accuracy (log p(chosen) > log p(rejected), per-token means) before and after, the implicit-reward
accuracy after, win rate (greedy reply equals the chosen routing note) before and after, training seconds, peak
RSS, and the peak RSS of an SFT step on the same batch (its chosen and rejected sequences as SFT rows).
Prints a markdown table with the machine and load average. Run it alone on a quiet machine (load < 0.5).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _quick() -> bool:
    return os.environ.get("BENCH_QUICK") == "1"


def _base() -> str:
    from lorakit.cli.quickstart import tiny_base
    from lorakit.core import bases

    return str(tiny_base(bases.lorakit_home() / "models" / "tiny-demo")) if _quick() else bases.DEFAULT_BASE


def _preferences():
    from lorakit.data.demo_preference import make_demo_preferences

    return make_demo_preferences(16, 8) if _quick() else make_demo_preferences()


def _quickstart(out: str, guard: bool) -> dict:
    from lorakit.cli.quickstart import run_quickstart

    report = run_quickstart(out, fast=_quick(), progress=False, drift_guard=guard, log=lambda _line: None)
    return {
        "exact_match": report["adapted"]["exact_match"],
        "drift_kl": report["drift_kl"],
        "train_s": report["seconds"]["train"],
        "email": report["general"][1]["adapted"],
    }


def _preference_scores(model, tokenizer, rows, batch=8) -> tuple[float, float]:
    import torch

    from lorakit.data.load import load_rows
    from lorakit.data.preference import collate_pairs, encode_preferences
    from lorakit.train.loss import TokenLoss

    pairs = encode_preferences(load_rows(rows), tokenizer, 192).examples
    tokens, wins = TokenLoss(model), 0
    with torch.no_grad():
        for start in range(0, len(pairs), batch):
            chunk = pairs[start : start + batch]
            b = collate_pairs(chunk, tokenizer.pad_token_id)
            logps = -tokens.per_sequence(b["input_ids"], b["attention_mask"], b["labels"])
            counts = torch.tensor([p.chosen.target_count for p in chunk] + [p.rejected.target_count for p in chunk])
            mean = logps / counts
            wins += int((mean[: len(chunk)] > mean[len(chunk) :]).sum())
    from lorakit.eval.generate import generate

    answers = generate(model, tokenizer, [r["prompt"] for r in rows], max_new_tokens=16, batch_size=16)
    won = sum(a.strip() == r["chosen"] for a, r in zip(answers, rows))
    return wins / len(pairs), won / len(rows)


def _dpo(out: str, steps: int) -> dict:
    import time

    import torch

    from lorakit.train import Trainer

    prefs = _preferences()
    paths = prefs.write(Path(out) / "data")
    config = {
        "base": _base(),
        "output": str(Path(out) / "run"),
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "targets": "all-linear"},
        "data": {"train": str(paths["train"]), "eval": str(paths["test"]), "max_length": 192},
        "train": {
            "objective": "dpo",
            "max_steps": steps,
            "batch_size": 8,
            "lr": 5e-4,
            "warmup_ratio": 0.1,
            "eval_every": steps,
            "save_every": steps,
        },
        "dpo": {"beta": 0.1},
    }
    trainer = Trainer.from_config(config, progress=False)
    before = _preference_scores(trainer.model, trainer.tokenizer, prefs.test)
    begin = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - begin
    after = _preference_scores(trainer.model, trainer.tokenizer, prefs.test)
    return {
        "accuracy_before": before[0],
        "accuracy_after": after[0],
        "win_before": before[1],
        "win_after": after[1],
        "reward_accuracy": trainer.eval_stats["reward_accuracy"],
        "train_s": seconds,
        "test_pairs": len(prefs.test),
        "threads": torch.get_num_threads(),
    }


def _sft_step(out: str) -> dict:
    from lorakit.train import Trainer

    rows = []
    for r in _preferences().train[:8]:
        rows += [{"messages": [*r["prompt"], {"role": "assistant", "content": r[k]}]} for k in ("chosen", "rejected")]
    config = {
        "base": _base(),
        "output": out,
        "data": {"max_length": 192},
        "train": {"max_steps": 2, "batch_size": 16, "save_every": 2, "eval_every": None},
    }
    Trainer.from_config(config, train_data=rows, progress=False).fit()
    return {}


def child(kind: str, out: str) -> None:
    shutil.rmtree(out, ignore_errors=True)  # this row's scratch directory, from an earlier run of the bench
    jobs = {
        "plain": lambda: _quickstart(out, False),
        "guarded": lambda: _quickstart(out, True),
        "dpo": lambda: _dpo(out, int(os.environ.get("BENCH_DPO_STEPS", "40"))),
        "sft_step": lambda: _sft_step(out),
    }
    row = jobs[kind]()
    row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(row))


def run(kind: str, out: Path, steps: int, quick: bool) -> dict:
    env = {
        **os.environ,
        "BENCH_DPO_STEPS": str(steps),
        "BENCH_QUICK": "1" if quick else "0",
    }
    done = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    if done.returncode != 0:
        sys.exit(f"the {kind} row failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    if Path("/proc/cpuinfo").exists():
        cpu = next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            cpu,
        )
    return (
        f"{cpu}, {os.cpu_count()} logical CPUs, load average {os.getloadavg()[0]:.2f} at start, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )


def _ratio(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--dpo-steps", type=int, default=40)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-objectives")
    parser.add_argument("--quick", action="store_true", help="smoke run on the tiny random model: 1 pair, 4 DPO steps")
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.quick:
        args.pairs, args.dpo_steps = 1, 4
        args.out = args.out.with_name(args.out.name + "-quick")
    if args.child:
        child(args.child, str(args.out))
        return
    header = machine()
    rows = {"plain": [], "guarded": []}
    for i in range(args.pairs):
        for kind in ("plain", "guarded"):
            rows[kind].append(run(kind, args.out / f"{kind}-{i}", args.dpo_steps, args.quick))
    dpo = run("dpo", args.out / "dpo", args.dpo_steps, args.quick)
    sft = run("sft_step", args.out / "sft-step", args.dpo_steps, args.quick)
    smoke = ["**Smoke run on the tiny random model (--quick): the numbers mean nothing.**", ""] if args.quick else []
    lines = [
        *smoke,
        f"Machine: {header}; load average at end {os.getloadavg()[0]:.2f}.",
        "",
        "| quickstart | exact match | drift KL | train s | peak RSS MB |",
        "|---|---:|---:|---:|---:|",
    ]
    for kind in ("plain", "guarded"):
        for r in rows[kind]:
            lines.append(
                f"| {kind} | {100 * r['exact_match']:.1f}% | {r['drift_kl']:.4f} | {r['train_s']:.0f} | "
                f"{r['peak_rss_mb']:.0f} |"
            )
    pairs = list(zip(rows["plain"], rows["guarded"]))
    lines += [
        "",
        f"Guarded / plain, median (min–max) over {len(pairs)} pairs: train time "
        f"{_ratio([g['train_s'] / p['train_s'] for p, g in pairs])}, peak RSS "
        f"{_ratio([g['peak_rss_mb'] / p['peak_rss_mb'] for p, g in pairs])}; exact match difference "
        f"{statistics.median([100 * (g['exact_match'] - p['exact_match']) for p, g in pairs]):+.1f} points.",
        "",
        f"Email prompt, guarded: {rows['guarded'][0]['email']!r}",
        "",
        f"| DPO ({dpo['test_pairs']} held-out pairs) | before | after |",
        "|---|---:|---:|",
        f"| preference accuracy (mean log-prob) | {100 * dpo['accuracy_before']:.1f}% | "
        f"{100 * dpo['accuracy_after']:.1f}% |",
        f"| implicit-reward accuracy | — | {100 * dpo['reward_accuracy']:.1f}% |",
        f"| win rate (greedy reply = chosen) | {100 * dpo['win_before']:.1f}% | {100 * dpo['win_after']:.1f}% |",
        "",
        f"DPO: {args.dpo_steps} steps of 8 pairs in {dpo['train_s']:.0f} s; "
        f"peak RSS {dpo['peak_rss_mb']:.0f} MB "
        f"= {dpo['peak_rss_mb'] / sft['peak_rss_mb']:.2f}× an SFT run on the same 16 sequences per step "
        f"({sft['peak_rss_mb']:.0f} MB).",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
