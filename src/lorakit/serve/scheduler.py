"""Continuous batching: requests join the running decode batch at step boundaries and leave when done.

Each :meth:`Scheduler.step` (1) drops requests whose client went away, (2) admits waiting requests into the
free rows of the batch, taking adapters in turn (round robin over the adapters that have someone waiting, so a
hot adapter cannot starve the others; a turn takes up to half the rows still free, at least one, so an adapter
with a backlog brings several rows at once and a batch holds fewer distinct adapters, each read once per step),
prefills the newcomers together and joins them to the running batch, and (3) decodes one token for every
running row. The waiting queue is bounded:
:meth:`submit` raises :class:`QueueFullError` beyond ``max_queue``.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from lorakit.core.errors import LorakitError
from lorakit.serve import batch as batching
from lorakit.serve.cache import CacheFullError
from lorakit.serve.sampling import SamplingParams, TextStream, TokenLogprobs, next_tokens


class QueueFullError(LorakitError):
    """More requests are waiting than the queue holds; the client should retry later (HTTP 429)."""


@dataclass
class Request:
    """One generation. ``emit(kind, payload)`` is called from the engine thread: ``("text", str)`` for each
    new piece of text, then ``("done", finish_reason)`` or ``("error", exception)``. ``logprobs`` holds one
    entry per token when ``params.logprobs`` is set; ``constraint`` follows ``params.grammar``."""

    adapter: str | None
    prompt: list[int]
    params: SamplingParams
    emit: Callable[[str, object], None]
    cancelled: bool = False
    tokens: list[int] = field(default_factory=list)
    created: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    finish_reason: str | None = None
    stream: TextStream | None = None
    generator: torch.Generator | None = None
    constraint: object | None = None
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    last_token_at: float | None = None

    def cancel(self) -> None:
        """The client went away: the request leaves the queue or the batch at the next step."""
        self.cancelled = True


class Scheduler:
    """Waiting requests per adapter (FIFO each), the running batch, and the step loop."""

    def __init__(self, engine, max_batch: int = 8, max_queue: int = 256) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.waiting: OrderedDict[str | None, deque[Request]] = OrderedDict()  # rotation order of adapters
        self.running: batching.Batch | None = None
        self.wakeup = threading.Condition()

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self.waiting.values())

    @property
    def busy(self) -> bool:
        return bool(self.queued or (self.running is not None and len(self.running)))

    def submit(self, request: Request) -> None:
        with self.wakeup:
            if self.queued >= self.max_queue:
                raise QueueFullError(
                    f"{self.queued} requests are already waiting (max_queue {self.max_queue}); retry later"
                )
            self.waiting.setdefault(request.adapter, deque()).append(request)
            self.wakeup.notify()

    def wait_for_work(self, timeout: float) -> None:
        with self.wakeup:
            if not self.busy:
                self.wakeup.wait(timeout)

    # -- one step ---------------------------------------------------------------------------------
    def step(self) -> None:
        """Admit, prefill and join newcomers, then decode one token for every running row.

        Holds the engine's lock throughout: adapters load and unload only between steps.
        """
        with self.engine.lock, torch.no_grad():
            newcomers = self._admit()
            if newcomers:
                self._prefill(newcomers)
            if self.running is not None:
                self._decode()

    def _admit(self) -> list[Request]:
        free = self.max_batch - (len(self.running) if self.running is not None else 0)
        admitted, blocked, turn = [], set(), []
        while free > 0:
            if not turn:
                with self.wakeup:
                    turn = self._next_turn(blocked, max(1, free // 2))
                if not turn:
                    break
            request = turn.pop(0)
            if request.cancelled:
                self._finish(request, "cancelled")
                continue
            try:
                if request.adapter is not None:
                    self.engine.cache.acquire(request.adapter)
            except CacheFullError:
                with self.wakeup:
                    self.waiting.setdefault(request.adapter, deque()).extendleft(reversed([request, *turn]))
                    self.waiting.move_to_end(request.adapter, last=False)
                blocked.add(request.adapter)
                turn = []
                continue
            except Exception as err:  # unknown, corrupt or mismatched adapter: this request fails, others go on
                self._fail(request, err)
                continue
            admitted.append(request)
            free -= 1
        return admitted

    def _next_turn(self, blocked: set, most: int) -> list[Request]:
        """Up to ``most`` oldest requests of the first adapter in rotation not ``blocked``; it goes to the end."""
        for adapter in list(self.waiting):
            queue = self.waiting[adapter]
            if adapter in blocked or not queue:
                if not queue:
                    del self.waiting[adapter]
                continue
            taken = [queue.popleft() for _ in range(min(most, len(queue)))]
            self.waiting.move_to_end(adapter)  # this adapter's turn is over
            if not queue:
                del self.waiting[adapter]
            return taken
        return []

    def _prefill(self, newcomers: list[Request]) -> None:
        engine = self.engine
        for request in newcomers:
            request.stream = TextStream(engine.tokenizer, request.params.stop)
            request.generator = request.params.generator()
        try:
            fresh, logits = batching.prefill(
                engine.model,
                engine.layers,
                [r.prompt for r in newcomers],
                [r.adapter for r in newcomers],
                newcomers,
                engine.pad_id,
                engine.solo_plans,
            )
        except Exception as err:
            for request in newcomers:
                self._fail(request, err)
            return
        fresh = self._advance(fresh, logits)
        if fresh is not None:
            self.running = batching.join(self.running, fresh)

    def _decode(self) -> None:
        batch = self.running
        alive = [i for i, r in enumerate(batch.rows) if not r.cancelled]
        for i, request in enumerate(batch.rows):
            if request.cancelled:
                self._finish(request, "cancelled")
        batch = batching.keep(batch, alive)
        if batch is None:
            self.running = None
            return
        try:
            logits = batching.decode(self.engine.model, self.engine.layers, batch, [r.tokens[-1] for r in batch.rows])
        except Exception as err:
            for request in batch.rows:
                self._fail(request, err)
            self.running = None
            return
        self.running = self._advance(batch, logits)

    def _advance(self, batch: batching.Batch, logits: torch.Tensor) -> batching.Batch | None:
        """Choose each row's next token, emit its text, and keep the rows that go on."""
        try:
            chosen = next_tokens(logits, batch.rows, self.engine.eos_ids)
        except Exception as err:
            for request in batch.rows:
                self._fail(request, err)
            return None
        kept = []
        now = time.perf_counter()
        positions = batch.positions.tolist()
        for i, (request, (token, logprobs)) in enumerate(zip(batch.rows, chosen)):
            if request.last_token_at is not None:
                self.engine.metrics.inter_token(request, now - request.last_token_at)
            request.first_token_at = request.first_token_at or now
            request.last_token_at = now
            if logprobs is not None:
                request.logprobs.append(logprobs)
            reason = self._take(request, token, positions[i] + 1)
            if reason is None:
                kept.append(i)
            else:
                self._finish(request, reason)
        return batching.keep(batch, kept)

    def _take(self, request: Request, token: int, context: int) -> str | None:
        """Record ``token`` for ``request``; the finish reason if it ends here."""
        request.tokens.append(token)
        params = request.params
        if request.constraint is not None:
            request.constraint.advance(token)
        stops = len(request.tokens) > params.min_tokens
        if stops and ((token in self.engine.eos_ids and not params.ignore_eos) or token in params.stop_token_ids):
            return "stop"
        delta = request.stream.push(token, check_stops=stops)
        if delta:
            request.emit("text", delta)
        if request.stream.stopped or (request.constraint is not None and request.constraint.stopped):
            return "stop"
        if len(request.tokens) >= request.params.max_tokens or context >= self.engine.max_context:
            return "length"
        return None

    def _finish(self, request: Request, reason: str) -> None:
        if request.stream is not None and reason != "cancelled":
            tail = request.stream.finish()
            if tail:
                request.emit("text", tail)
        request.finish_reason = reason
        self._release(request)
        self.engine.metrics.finished(request)
        request.emit("done", reason)

    def _fail(self, request: Request, err: Exception) -> None:
        self._release(request)
        request.finish_reason = "error"
        self.engine.metrics.failed(request, err)
        request.emit("error", err)

    def _release(self, request: Request) -> None:
        """Unpin the adapter of an admitted request (admission gives it a text stream)."""
        if request.stream is not None and request.adapter is not None:
            self.engine.cache.release(request.adapter)
