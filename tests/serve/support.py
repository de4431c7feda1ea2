"""Helpers for the serving tests: a tiny random Llama speaking the default model's tokenizer, adapters on disk,
reference generation (each request alone, its adapter merged), and a real uvicorn server on a loopback port."""

from __future__ import annotations

import functools
import socket
import threading
import time
from pathlib import Path

import torch

import lorakit as lk
from lorakit.serve import Engine

VOCAB = 49152


@functools.cache
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(lk.bases.resolve(lk.bases.DEFAULT_BASE))


def tiny_base(seed: int = 0, layers: int = 2):
    """A random Llama with the default model's vocabulary (hidden 32), so the real tokenizer and chat template work."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = LlamaForCausalLM(config).eval()
    model.config.name_or_path = f"tiny-llama-{seed}"
    return model


def save_adapters(
    root: Path, ranks: dict[str, int], seed: int = 0, base_seed: int = 0, targets: str | list[str] = "all-linear"
) -> dict[str, Path]:
    """Random adapters (non-zero B) for ``tiny_base(base_seed)``, one directory each under ``root``."""
    model = tiny_base(base_seed)
    paths = {}
    for i, (name, r) in enumerate(ranks.items()):
        lk.inject(model, lk.LoraConfig(r=r, alpha=2 * r, targets=targets), name=name)
        generator = torch.Generator().manual_seed(seed * 1000 + i)
        with torch.no_grad():
            for p in lk.model.adapter_parameters(model, name).values():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
        paths[name] = lk.save_adapter(model, root / name, name)
        lk.delete_adapter(model, name)
    return paths


def engine_with(paths: dict[str, Path], base_seed: int = 0, **kwargs) -> Engine:
    engine = Engine(tiny_base(base_seed), tokenizer(), base_name="tiny", **kwargs)
    for name, path in paths.items():
        engine.load_adapter(name, path)
    return engine


def reference_greedy(
    prompt: list[int], adapter_dir: Path | None, steps: int, base_seed: int = 0, eos: set[int] = frozenset()
) -> list[int]:
    """Greedy tokens of one request alone: a fresh base with the adapter loaded and merged, no KV cache."""
    model = tiny_base(base_seed)
    if adapter_dir is not None:
        lk.load_adapter(model, adapter_dir, "ref")
        lk.merge(model, "ref")
    ids = list(prompt)
    out = []
    with torch.no_grad():
        for _ in range(steps):
            token = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            out.append(token)
            if token in eos:
                break
            ids.append(token)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A real uvicorn server for ``app`` on a loopback port, in a thread (``with Server(app) as url: ...``)."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
