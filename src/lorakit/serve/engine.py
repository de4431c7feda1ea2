"""The serving engine: one base model, many adapters, continuous batching of requests that name them.

Requests for different adapters share a batch: every LoRA layer adds ``s_a · B_a A_a x`` to each row ``x``
from its own adapter ``a`` (or nothing for base rows) with batched matmuls per rank group
(``lorakit.core.layers.routed``), inside the same model used for training. Adapters load from directories or
``registry:`` references into a bounded cache (``serve.cache``); the scheduler (``serve.scheduler``) runs in a
background thread (:meth:`Engine.start`) or inline (:meth:`Engine.run_until_idle`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from lorakit.core import bases
from lorakit.core.errors import ConfigError
from lorakit.core.model import adapter_state, lora_layers, set_active
from lorakit.serve.cache import AdapterCache, UnknownAdapterError
from lorakit.serve.grammar import Constraint
from lorakit.serve.metrics import Metrics
from lorakit.serve.sampling import SamplingParams
from lorakit.serve.scheduler import Request, Scheduler


class PromptTooLongError(ConfigError):
    """A prompt (plus its max_tokens) exceeds what the server accepts."""


@dataclass
class Completion:
    """The result of :meth:`Engine.generate`."""

    text: str
    tokens: list[int]
    finish_reason: str
    prompt_tokens: int
    logprobs: list = field(default_factory=list)  # TokenLogprobs per token when asked for


class Engine:
    """Serve ``model`` (with ``tokenizer``) and the adapters registered on it.

    ``max_resident``/``max_bytes`` bound the adapters kept in the model; ``max_batch`` the rows decoding
    together; ``max_queue`` the requests waiting; ``max_prompt_tokens`` the prompt length accepted.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        *,
        base_name: str = bases.DEFAULT_BASE,
        max_resident: int = 64,
        max_bytes: int | None = None,
        max_batch: int = 8,
        max_queue: int = 256,
        max_prompt_tokens: int | None = None,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.base_name = base_name
        self.metrics = Metrics(base_name)
        self.cache = AdapterCache(model, max_resident, max_bytes, on_event=self._cache_event)
        self.scheduler = Scheduler(self, max_batch, max_queue)
        self.lock = threading.RLock()
        self.max_context = int(getattr(model.config, "max_position_embeddings", 2048))
        self.max_prompt_tokens = min(max_prompt_tokens or self.max_context - 1, self.max_context - 1)
        self.eos_ids = _eos_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids, default=0)
        self.layers = [layer for _, layer in lora_layers(model)]
        self.solo_plans: dict[str, dict] = {}  # adapter -> per-layer plans of batches with every row on it
        model.__dict__["lorakit_fingerprint"] = bases.fingerprint(model)  # served weights never change: hash once
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @classmethod
    def from_base(cls, base: str = bases.DEFAULT_BASE, *, dtype: torch.dtype = torch.float32, **kwargs) -> Engine:
        model, tokenizer = bases.load(base, dtype=dtype)
        return cls(model, tokenizer, base_name=base, **kwargs)

    # -- adapters -----------------------------------------------------------------------------------
    def load_adapter(self, name: str, source: str | Path) -> None:
        """Register adapter ``name`` from a directory or ``registry:name@version`` and load it now (validated)."""
        if name == self.base_name:
            raise ConfigError(f"adapter name {name!r} is the base model's name; choose another")
        with self.lock:
            self.cache.register(name, source)
            self._gauges()

    def unload_adapter(self, name: str) -> None:
        with self.lock:
            self.cache.unregister(name)
            self._gauges()

    def adapters(self) -> dict[str, str]:
        """Known adapters: name -> source."""
        return dict(self.cache.sources)

    def adapter_base(self, name: str) -> str | None:
        config = adapter_state(self.model).configs.get(name)
        return getattr(config, "base_model_name_or_path", None) if config else None

    # -- requests -----------------------------------------------------------------------------------
    def encode(self, prompt: str | list[int]) -> list[int]:
        return list(prompt) if isinstance(prompt, list) else self.tokenizer.encode(prompt)

    def encode_chat(self, messages: list[dict]) -> list[int]:
        """Apply the tokenizer's chat template (with the generation prompt) and tokenize."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise ConfigError(f"the tokenizer of {self.base_name!r} has no chat template; use completions instead")
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def submit(self, adapter: str | None, prompt: list[int], params: SamplingParams, emit) -> Request:
        """Queue a request (``adapter`` None or the base's name: the base). Checks names and limits first.

        Raises :class:`UnknownAdapterError`, :class:`PromptTooLongError` (prompt over ``max_prompt_tokens``, or
        prompt plus ``max_tokens`` over the context), :class:`ConfigError` (token ids outside the vocabulary,
        a grammar that cannot be enforced) and :class:`QueueFullError`."""
        if adapter == self.base_name:
            adapter = None
        if adapter is not None and adapter not in self.cache.sources:
            raise UnknownAdapterError(f"no adapter named {adapter!r}; known: {sorted(self.cache.sources) or 'none'}")
        if not prompt:
            raise ConfigError("prompt is empty")
        vocab = self.model.config.vocab_size
        for what, ids in (
            ("prompt", prompt),
            ("stop_token_ids", params.stop_token_ids),
            ("logit_bias", list(params.logit_bias)),
        ):
            if ids and (min(ids) < 0 or max(ids) >= vocab):
                raise ConfigError(f"{what} token ids must lie in [0, {vocab}), got {min(ids)}..{max(ids)}")
        if len(prompt) > self.max_prompt_tokens:
            raise PromptTooLongError(f"prompt has {len(prompt)} tokens, the limit is {self.max_prompt_tokens}")
        if params.max_tokens < 1:
            raise ConfigError(f"max_tokens must be at least 1, got {params.max_tokens}")
        if len(prompt) + params.max_tokens > self.max_context:
            raise PromptTooLongError(
                f"prompt ({len(prompt)} tokens) plus max_tokens ({params.max_tokens}) exceeds the "
                f"context of {self.max_context} tokens; lower max_tokens to at most "
                f"{self.max_context - len(prompt)}"
            )
        request = Request(adapter, prompt, params, emit)
        if params.grammar is not None:
            request.constraint = Constraint(params.grammar, self.tokenizer, vocab)
        self.scheduler.submit(request)
        self.metrics.queued.set(self.scheduler.queued)
        return request

    def generate(self, prompt: str | list[int], adapter: str | None = None, **params) -> Completion:
        """Generate one completion (blocking): via the background thread when started, else inline.

        ``params`` are :class:`SamplingParams` fields (e.g. ``max_tokens=8, temperature=0``)."""
        pieces: list[str] = []
        done = threading.Event()
        outcome: dict[str, object] = {}

        def emit(kind: str, payload) -> None:
            if kind == "text":
                pieces.append(payload)
            else:
                outcome[kind] = payload
                done.set()

        ids = self.encode(prompt)
        request = self.submit(adapter, ids, SamplingParams(**params), emit)
        if self._thread is None:
            self.run_until_idle()
        done.wait()
        if "error" in outcome:
            raise outcome["error"]
        return Completion("".join(pieces), request.tokens, request.finish_reason, len(ids), request.logprobs)

    # -- running ------------------------------------------------------------------------------------
    def step(self) -> None:
        self.scheduler.step()
        self._gauges()

    def run_until_idle(self) -> None:
        """Step until nothing waits or runs (for scripts and tests without the background thread)."""
        while self.scheduler.busy:
            self.step()

    def start(self) -> None:
        """Run the scheduler in a background thread until :meth:`stop`."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="lorakit-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self.scheduler.wakeup:
            self.scheduler.wakeup.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.scheduler.wait_for_work(timeout=0.1)
            if self.scheduler.busy:
                self.step()

    def _cache_event(self, event: str, name: str) -> None:
        if event == "wrap":  # loaded by lk.load_adapter: it may wrap layers and become active; rows are routed instead
            set_active(self.model, ())
            self.layers = [layer for _, layer in lora_layers(self.model)]
            for layer in self.layers:
                layer.routing = None
        elif event == "unload":
            self.solo_plans.pop(name, None)
        else:
            self.metrics.cache_event(event, name)

    def _gauges(self) -> None:
        self.metrics.resident.set(len(self.cache.resident))
        self.metrics.resident_bytes.set(self.cache.resident_bytes)
        self.metrics.queued.set(self.scheduler.queued)
        running = self.scheduler.running
        self.metrics.running.set(len(running) if running is not None else 0)


def _eos_ids(model: nn.Module, tokenizer) -> set[int]:
    ids = set()
    generation = getattr(model, "generation_config", None)
    for source in (getattr(generation, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(int(i) for i in source)
    return ids
