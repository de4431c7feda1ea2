"""One HTTP generation request as engine jobs: ``n`` (or ``best_of``) choices per prompt, each a
:class:`~lorakit.serve.scheduler.Request`, answered whole or streamed as server-sent events.

Choice ``j`` of a prompt samples with ``seed + j`` when a seed is given, so ``n`` seeded choices differ from
each other and repeat across calls. ``best_of`` keeps the ``n`` candidates with the highest sum of token
log-probabilities (OpenAI's definition). A non-streaming client that disconnects cancels its jobs at the next
step, as a streaming one does.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse

from lorakit.core.errors import LorakitError
from lorakit.serve import responses as shapes
from lorakit.serve.bodies import ApiError, from_lorakit
from lorakit.serve.engine import Engine
from lorakit.serve.grammar import GrammarError
from lorakit.serve.sampling import SamplingParams


@dataclass
class Job:
    """One choice being generated: its prompt's index, the prompt ids and text (for ``echo``), the request."""

    prompt_index: int
    ids: list[int]
    prompt_text: str
    request: object = None


async def run(
    engine: Engine,
    http: Request,
    body,
    prompts: list[tuple[list[int], str]],
    params: list[SamplingParams],
    chat: bool,
    echo: bool = False,
    keep: int = 1,
    report_logprobs: bool = False,
):
    """Submit ``len(params)`` choices for each prompt and answer (a dict, or a streaming response).

    ``params`` has one entry per candidate; ``keep`` candidates per prompt are returned (``best_of``)."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    jobs: list[Job] = []

    def emitter(index: int):
        def emit(kind: str, payload) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, (index, kind, payload))
            except RuntimeError:  # the event loop is gone (server shutting down)
                pass

        return emit

    try:
        for p, (ids, text) in enumerate(prompts):
            for candidate in params:
                job = Job(p, ids, text)
                submit = (engine.submit, body.model, ids, candidate, emitter(len(jobs)))
                job.request = (
                    await run_in_threadpool(*submit) if candidate.grammar is not None else submit[0](*submit[1:])
                )
                jobs.append(job)
    except LorakitError as err:
        _cancel(jobs)
        api = from_lorakit(err)
        api.param = "response_format" if isinstance(err, GrammarError) else api.param
        raise api from None
    meta = {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}",
        "created": int(time.time()),
        "model": body.model,
    }
    if body.stream:
        return StreamingResponse(
            _stream(engine, jobs, events, meta, chat, echo, report_logprobs, body.include_usage),
            media_type="text/event-stream",
        )
    collect = asyncio.ensure_future(_collect(jobs, events))
    gone = asyncio.ensure_future(_disconnected(http))
    try:
        await asyncio.wait({collect, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not collect.done():
        collect.cancel()
        _cancel(jobs)
        return Response(status_code=499)  # nobody reads it: the client closed the connection
    texts = collect.result()
    return _whole(engine, jobs, texts, meta, chat, echo, keep, len(params), report_logprobs)


def _cancel(jobs: list[Job]) -> None:
    for job in jobs:
        job.request.cancel()


async def _disconnected(http: Request) -> None:
    """Returns when the client closes the connection (the body has been read, so only a disconnect comes)."""
    while (await http.receive())["type"] != "http.disconnect":
        pass


async def _collect(jobs: list[Job], events: asyncio.Queue) -> list[str]:
    texts = [[] for _ in jobs]
    open_jobs = len(jobs)
    while open_jobs:
        index, kind, payload = await events.get()
        if kind == "text":
            texts[index].append(payload)
        elif kind == "error":
            _cancel(jobs)
            raise from_lorakit(payload)
        else:
            open_jobs -= 1
    return ["".join(t) for t in texts]


def _whole(
    engine: Engine,
    jobs: list[Job],
    texts: list[str],
    meta: dict,
    chat: bool,
    echo: bool,
    keep: int,
    per_prompt: int,
    report_logprobs: bool,
) -> dict:
    choices = []
    for start in range(0, len(jobs), per_prompt):
        group = list(range(start, start + per_prompt))
        if keep < per_prompt:  # best_of: the most likely candidates
            group = sorted(group, key=lambda i: -sum(e.logprob for e in jobs[i].request.logprobs))[:keep]
        for i in group:
            job, text = jobs[i], texts[i]
            request = job.request
            if chat:
                logprobs = shapes.chat_logprobs(engine.tokenizer, request.logprobs) if report_logprobs else None
                choices.append(shapes.chat_choice(len(choices), text, request.finish_reason, logprobs))
            else:
                prefix = job.prompt_text if echo else ""
                logprobs = (
                    shapes.completion_logprobs(engine.tokenizer, request.logprobs, len(prefix))
                    if report_logprobs
                    else None
                )
                choices.append(shapes.completion_choice(len(choices), prefix + text, request.finish_reason, logprobs))
    prompt_tokens = sum(len(ids) for ids in {id(j.ids): j.ids for j in jobs}.values())
    completion_tokens = sum(len(j.request.tokens) for j in jobs)
    kind = "chat.completion" if chat else "text_completion"
    return {**meta, "object": kind, "choices": choices, "usage": shapes.usage(prompt_tokens, completion_tokens)}


async def _stream(
    engine: Engine,
    jobs: list[Job],
    events: asyncio.Queue,
    meta: dict,
    chat: bool,
    echo: bool,
    report_logprobs: bool,
    include_usage: bool,
) -> AsyncIterator[str]:
    """OpenAI's chunks, one choice index per job, then the usage chunk (``include_usage``) and ``[DONE]``; a
    client that goes away cancels every job."""
    kind_name = "chat.completion.chunk" if chat else "text_completion"
    sent = [0] * len(jobs)  # log-probability entries already sent per job
    extra = {"usage": None} if include_usage else {}

    def chunk(index: int, text: str | None, finish: str | None, role: bool = False) -> str:
        request = jobs[index].request
        entries = request.logprobs[sent[index] :] if report_logprobs else []
        sent[index] += len(entries)
        if chat:
            logprobs = shapes.chat_logprobs(engine.tokenizer, entries) if report_logprobs else None
            delta = ({"role": "assistant"} if role else {}) | ({"content": text} if text is not None else {})
            choice = {"index": index, "delta": delta, "finish_reason": finish, "logprobs": logprobs}
        else:
            logprobs = shapes.completion_logprobs(engine.tokenizer, entries) if report_logprobs else None
            choice = shapes.completion_choice(index, text or "", finish, logprobs)
        return shapes.sse({**meta, "object": kind_name, "choices": [choice], **extra})

    try:
        for index, job in enumerate(jobs):
            if chat:
                yield chunk(index, None, None, role=True)
            elif echo:
                yield chunk(index, job.prompt_text, None)
        open_jobs = len(jobs)
        while open_jobs:
            index, kind, payload = await events.get()
            if kind == "text":
                yield chunk(index, payload, None)
            elif kind == "error":
                api = from_lorakit(payload)
                yield shapes.sse(
                    {"error": {"message": api.message, "type": "server_error", "param": None, "code": api.code}}
                )
                return
            else:
                open_jobs -= 1
                yield chunk(index, None if chat else "", jobs[index].request.finish_reason)
        if include_usage:
            prompt_tokens = sum(len(ids) for ids in {id(j.ids): j.ids for j in jobs}.values())
            tokens = sum(len(j.request.tokens) for j in jobs)
            yield shapes.sse({**meta, "object": kind_name, "choices": [], "usage": shapes.usage(prompt_tokens, tokens)})
        yield shapes.sse("[DONE]")
    finally:
        for job in jobs:
            if job.request.finish_reason is None:
                job.request.cancel()


def seeds(seed: int | None, count: int) -> list[int | None]:
    """The seed of each of ``count`` choices: ``seed + j``, or None (random) for all."""
    return [None if seed is None else seed + j for j in range(count)]


def reject_unknown(engine: Engine, model: str) -> None:
    """404 before any work when ``model`` names neither the base nor a known adapter."""
    if model != engine.base_name and model not in engine.adapters():
        raise ApiError(
            404,
            f"no model or adapter named {model!r}; known: {sorted([engine.base_name, *engine.adapters()])}",
            "model_not_found",
            "model",
        )
