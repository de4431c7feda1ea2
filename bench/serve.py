"""Serving many adapters over one base: G1, G2, G3, L1, L2, S1, S2 (../shared/BENCHMARKS.md) on SmolLM2-135M.

    .venv/bin/python bench/serve.py [--pairs 3] [--threads 1] [--requests 96] [--write-docs]
    .venv/bin/python bench/serve.py --smoke      # a tiny random base, 10 adapters, one pair: checks the script runs

Run it on a quiet machine: the table prints the load average (before and after), and a busy machine skews
every ratio.

Adapters are random r=16, α=32 on q,k,v,o,gate,up,down (19.6 MB each in fp32), written to a temporary directory.
Contender and reference alternate in one process (A B A B …) and each figure is the median of the per-pair
ratios with min–max. G: greedy decode of 16 tokens after a 32-token prompt through the engine's batch code,
contender and reference stepping in alternation (A B A B … within each pair),
with a plain model holding the merged adapter (``merge_and_unload``) as reference, and PEFT's
``adapter_names`` mixed batch for G3. L1: ``Engine.load_adapter`` (disk to servable, page cache warm) against
``safetensors.torch.load_file`` of the same file. L2: re-routing every LoRA layer of a batch to another
resident adapter, including finding (or building) each layer's plan. S: a real uvicorn server on loopback, 64 client
threads sending a bounded number of completions (16 tokens each) with Zipf(1) popularity over 100 adapters, against the
same load all on one adapter. ``--write-docs`` puts the table into docs/benchmarks.md between the ``bench:serve``
markers.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import random
import re
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
N_ADAPTERS, PROMPT, STEPS = 100, 32, 16


def machine() -> str:
    cpu = platform.processor() or "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return (
        f"{cpu}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"load average {os.getloadavg()[0]:.1f}"
    )


def summary(ratios: list[float]) -> str:
    return f"{statistics.median(ratios):.3f} ({min(ratios):.3f}–{max(ratios):.3f})"


def make_adapters(model, root: Path, count: int) -> list[Path]:
    """``count`` random adapters for ``model`` (each its own directory), written through ``lk.save_adapter``."""
    import lorakit as lk

    paths = []
    lk.inject(model, lk.LoraConfig(r=16, alpha=32, targets="all-linear"), name="bench")
    params = lk.model.adapter_parameters(model, "bench")
    for i in range(count):
        generator = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for p in params.values():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
        paths.append(lk.save_adapter(model, root / f"ad{i}", "bench"))
    lk.delete_adapter(model, "bench")
    lk.unload(model)
    return paths


class Decoder:
    """Greedy decoding of ``len(adapters)`` rows after a ``PROMPT``-token prompt, one step at a time: through the
    engine's batch code, or through PEFT's forward with ``adapter_names`` when ``peft_names`` is given."""

    def __init__(self, model, layers, adapters: list[str | None], peft_names: list[str] | None = None) -> None:
        self.model, self.layers, self.adapters, self.peft_names = model, layers, adapters, peft_names

    def start(self) -> None:
        from transformers import DynamicCache

        from lorakit.serve import batch as batching

        rows = len(self.adapters)
        prompts = [[(97 * r + 13 * t) % 40000 + 100 for t in range(PROMPT)] for r in range(rows)]
        if self.peft_names is None:
            self.batch, logits = batching.prefill(self.model, self.layers, prompts, self.adapters, list(range(rows)), 0)
            self.tokens = logits.argmax(-1).tolist()
        else:
            self.cache = DynamicCache()
            out = self.model(
                input_ids=torch.tensor(prompts),
                past_key_values=self.cache,
                use_cache=True,
                adapter_names=self.peft_names,
            )
            self.token = out.logits[:, -1].argmax(-1, keepdim=True)

    def step(self) -> None:
        from lorakit.serve import batch as batching

        if self.peft_names is None:
            self.tokens = batching.decode(self.model, self.layers, self.batch, self.tokens).argmax(-1).tolist()
        else:
            out = self.model(
                input_ids=self.token, past_key_values=self.cache, use_cache=True, adapter_names=self.peft_names
            )
            self.token = out.logits[:, -1].argmax(-1, keepdim=True)


def interleaved(a: Decoder, b: Decoder) -> tuple[float, float]:
    """Tokens/s of ``a`` and ``b`` decoding ``STEPS`` steps in alternation (A B A B …), so both see the same
    machine load."""
    spent = [0.0, 0.0]
    with torch.no_grad():
        a.start()
        b.start()
        for _ in range(STEPS):
            for i, decoder in enumerate((a, b)):
                start = time.perf_counter()
                decoder.step()
                spent[i] += time.perf_counter() - start
    rows = len(a.adapters)
    return rows * STEPS / spent[0], rows * STEPS / spent[1]


def bench_decode(engine, merged, peft_model, pairs: int) -> dict[str, list[float]]:
    names = [f"ad{i}" for i in range(8)]
    model, layers = engine.model, engine.layers
    cases = {
        "G1 batch 1": (Decoder(model, layers, ["ad0"]), Decoder(merged, [], [None])),
        "G1 batch 8": (Decoder(model, layers, ["ad0"] * 8), Decoder(merged, [], [None] * 8)),
        "G2": (Decoder(model, layers, names), Decoder(merged, [], [None] * 8)),
        "G3": (Decoder(model, layers, names), Decoder(peft_model, [], [None] * 8, peft_names=names)),
    }
    results: dict = {key: [] for key in cases}
    rates: dict[str, list[float]] = {}
    for _ in range(pairs):
        for key, (contender, reference) in cases.items():
            a, b = interleaved(contender, reference)
            results[key].append(a / b)
            rates.setdefault(key, []).append(a)
            rates.setdefault(key + " ref", []).append(b)
            print(f"  {key}: {a:.1f} vs {b:.1f} tokens/s -> {a / b:.3f}", flush=True)
    results["rates"] = rates
    return results


def bench_load(engine, paths: list[Path], pairs: int) -> list[float]:
    from safetensors.torch import load_file

    ratios = []
    for i in range(max(5 * pairs, 15)):
        path = paths[(len(paths) // 2 + i) % len(paths)]  # the upper half: not resident before
        (path / "adapter_model.safetensors").read_bytes()  # page cache warm
        start = time.perf_counter()
        load_file(path / "adapter_model.safetensors")
        raw = time.perf_counter() - start
        start = time.perf_counter()
        engine.load_adapter(f"l1-{i}", path)  # a new name each time: always a real load
        ours = time.perf_counter() - start
        engine.unload_adapter(f"l1-{i}")
        ratios.append(ours / raw)
        print(f"  L1: {1000 * ours:.1f} ms vs raw read {1000 * raw:.1f} ms -> {ours / raw:.2f}", flush=True)
    return ratios


def bench_switch(engine, rows: int = 8, repeats: int = 100) -> float:
    """Median ms to move a batch of ``rows`` from one resident adapter to the other, as the engine does: a new
    routing (reusing the adapter's plans), set on every LoRA layer, and each layer's plan looked up or built."""
    from lorakit.core.layers import RowRouting, routed
    from lorakit.serve.batch import _route

    times = []
    with torch.no_grad():
        for i in range(repeats):
            name = f"ad{i % 2}"
            start = time.perf_counter()
            routing = RowRouting([name] * rows, plans=engine.solo_plans.setdefault(name, {}))
            _route(engine.layers, routing)
            for layer in engine.layers:
                routed.plan(layer, routing)
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def load_run(url: str, models: list[str], clients: int, deadline_s: float) -> tuple[float, list[float]]:
    """Send ``models`` (one completion each) from ``clients`` threads; (requests/s, latencies in s)."""
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=deadline_s)
    latencies = []
    start = time.perf_counter()

    def one(i: int) -> None:
        if time.perf_counter() - start > deadline_s:
            return
        sent = time.perf_counter()
        client.completions.create(
            model=models[i],
            prompt=f"Question {i}: what should I do next?",
            max_tokens=16,
            temperature=0,
            extra_body={"ignore_eos": True},
        )
        latencies.append(time.perf_counter() - sent)

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, range(len(models))))
    return len(latencies) / (time.perf_counter() - start), latencies


def serve_in_thread(app):
    """A real uvicorn server on a free loopback port, in a daemon thread; returns (server, url)."""
    import socket

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}"


def tiny_model():
    """The quickstart's 2-layer random Llama (hidden 64, the default model's tokenizer), for ``--smoke``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import lorakit as lk
    from lorakit.cli.quickstart import tiny_base

    directory = tiny_base(lk.bases.lorakit_home() / "models" / "tiny-demo")
    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    model.config.name_or_path = "tiny-smoke"
    return model, AutoTokenizer.from_pretrained(directory)


def bench_server(engine, pairs: int, requests: int, clients: int = 64) -> dict:
    from lorakit.serve.api import create_app

    weights = [1 / (k + 1) for k in range(N_ADAPTERS)]
    result = {"S1": [], "mixed": [], "single": []}
    server, url = serve_in_thread(create_app(engine))
    try:
        load_run(
            url, random.Random(99).choices([f"ad{i}" for i in range(N_ADAPTERS)], weights, k=clients), clients, 300
        )
        for pair in range(pairs):
            zipf = random.Random(pair).choices([f"ad{i}" for i in range(N_ADAPTERS)], weights, k=requests)
            mixed_rate, mixed_lat = load_run(url, zipf, clients, 600)
            single_rate, single_lat = load_run(url, ["ad0"] * requests, clients, 600)
            result["S1"].append(mixed_rate / single_rate)
            result["mixed"].append((mixed_rate, mixed_lat))
            result["single"].append((single_rate, single_lat))
            print(
                f"  S1: {mixed_rate:.2f} vs {single_rate:.2f} req/s -> {mixed_rate / single_rate:.3f} "
                f"({len(set(zipf))} distinct adapters)",
                flush=True,
            )
    finally:
        server.should_exit = True
    return result


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def table(g: dict, l1: list[float], l2: float, s: dict, requests: int) -> str:
    mixed_lat = [x for _, lat in s["mixed"] for x in lat]
    single_lat = [x for _, lat in s["single"] for x in lat]
    rows = [
        ("G1", "greedy decode tokens/s, batch 1: unmerged adapter / merged", summary(g["G1 batch 1"]), "≥ 0.95"),
        ("G1", "same, batch 8", summary(g["G1 batch 8"]), "≥ 0.95"),
        ("G2", "batch 8, 8 distinct adapters / all on one merged adapter", summary(g["G2"]), "≥ 0.85"),
        ("G3", "same mixed batch: lorakit / PEFT `adapter_names`", summary(g["G3"]), "≥ 2.0"),
        ("L1", "disk to servable / raw `safetensors.torch.load_file`", summary(l1), "≤ 1.5"),
        ("L2", "switch a batch between two resident adapters (median of 100)", f"{l2:.3f} ms", "≤ 1 ms"),
        (
            "S1",
            f"req/s, 64 clients, 100 adapters (Zipf) / all on one ({requests} requests × 16 tokens a run)",
            summary(s["S1"]),
            "≥ 0.8",
        ),
        (
            "S2",
            "latency at that load, p50 / p99 (100 adapters; one adapter)",
            f"{percentile(mixed_lat, 0.5):.1f} s / {percentile(mixed_lat, 0.99):.1f} s; "
            f"{percentile(single_lat, 0.5):.1f} s / {percentile(single_lat, 0.99):.1f} s",
            "reported",
        ),
    ]
    rates = g["rates"]
    lines = ["| id | figure | ratio, median (min–max) | goal |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    lines.append("")
    lines.append(
        "Absolute rates (median tokens/s, contender / reference): "
        + "; ".join(
            f"{k} {statistics.median(rates[k]):.1f} / {statistics.median(rates[k + ' ref']):.1f}"
            for k in ("G1 batch 1", "G1 batch 8", "G2", "G3")
        )
        + "."
    )
    return "\n".join(lines) + "\n"


def write_docs(text: str) -> None:
    docs = ROOT / "docs" / "benchmarks.md"
    content = docs.read_text()
    block = f"<!-- bench:serve -->\n### Serving many adapters\n\n{text}<!-- /bench:serve -->"
    docs.write_text(re.sub(r"<!-- bench:serve -->.*?<!-- /bench:serve -->", lambda _: block, content, flags=re.S))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny random base, 10 adapters, 1 pair, 16 requests (checks the script end to end; numbers mean nothing)",
    )
    args = parser.parse_args()
    global N_ADAPTERS
    if args.smoke:
        N_ADAPTERS, args.pairs, args.requests, args.write_docs = 10, 1, 16, False
    print(f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    torch.set_num_threads(args.threads)
    import lorakit as lk
    from lorakit.serve import Engine

    began = time.perf_counter()
    model, tokenizer = tiny_model() if args.smoke else lk.bases.load()
    merged = copy.deepcopy(model)
    with tempfile.TemporaryDirectory(prefix="lorakit-bench-serve-") as tmp:
        paths = make_adapters(copy.deepcopy(model), Path(tmp), N_ADAPTERS)
        print(f"{N_ADAPTERS} adapters written in {time.perf_counter() - began:.0f} s", flush=True)
        lk.load_adapter(merged, paths[0], "ad0")
        merged = lk.merge_and_unload(merged, "ad0")
        engine = Engine(model, tokenizer, max_resident=64, max_batch=16, max_queue=1024)
        for i, path in enumerate(paths):
            engine.cache.register(f"ad{i}", path, load=i < 8)
        from peft import PeftModel

        peft_base = tiny_model()[0] if args.smoke else lk.bases.load()[0]
        peft_model = PeftModel.from_pretrained(peft_base, str(paths[0]), adapter_name="ad0")
        for i in range(1, 8):
            peft_model.load_adapter(str(paths[i]), adapter_name=f"ad{i}")
        peft_model.eval()
        print("decode (G1, G2, G3)", flush=True)
        g = bench_decode(engine, merged, peft_model, args.pairs)
        del peft_model, peft_base, merged
        print("load (L1) and switch (L2)", flush=True)
        l1 = bench_load(engine, paths, args.pairs)
        l2 = bench_switch(engine)
        print(f"  L2: {l2:.3f} ms", flush=True)
        print("server (S1, S2)", flush=True)
        s = bench_server(engine, args.pairs, args.requests, clients=8 if args.smoke else 64)
    text = table(g, l1, l2, s, args.requests)
    command = (
        "--smoke"
        if args.smoke
        else f"--pairs {args.pairs} --threads {args.threads} --requests {args.requests} --write-docs"
    )
    header = (
        f"Command: `.venv/bin/python bench/serve.py {command}` ({time.perf_counter() - began:.0f} s)\n\n"
        f"Machine: {machine()}\n\n"
    )
    print(header + text)
    if args.write_docs:
        write_docs(header + text)


if __name__ == "__main__":
    main()
