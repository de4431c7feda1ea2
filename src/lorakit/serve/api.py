"""The OpenAI-compatible HTTP API over an :class:`~lorakit.serve.Engine` (FastAPI; run it with uvicorn).

``model`` in a request names an adapter (or the base). Errors use OpenAI's body,
``{"error": {"message", "type", "param", "code"}}``. ``POST``/``DELETE /v1/adapters`` need the bearer token and
load only from below the adapter root (checked after resolving symlinks) or from ``registry:`` references.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse

from lorakit.errors import (AdapterFileError, AdapterMismatchError, AdapterStateError, ConfigError, LorakitError)
from lorakit.serve.cache import CacheFullError, UnknownAdapterError
from lorakit.serve.engine import Engine
from lorakit.serve.protocol import ChatRequest, CompletionRequest, LoadAdapterRequest
from lorakit.serve.scheduler import QueueFullError

_STATUS = [(UnknownAdapterError, 404, "model_not_found"), (QueueFullError, 429, "rate_limit_exceeded"),
           (CacheFullError, 503, "adapters_busy"), (AdapterMismatchError, 409, "adapter_base_mismatch"),
           (AdapterStateError, 409, "conflict"), (AdapterFileError, 400, "invalid_adapter"),
           (ConfigError, 400, "invalid_request"), (LorakitError, 400, "invalid_request")]


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


def _error(status: int, message: str, code: str, param: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status)


def _from_lorakit(err: Exception) -> ApiError:
    for kind, status, code in _STATUS:
        if isinstance(err, kind):
            return ApiError(status, str(err), code)
    return ApiError(500, f"internal error: {type(err).__name__}: {err}", "internal_error")


def create_app(engine: Engine, *, admin_token: str | None = None, adapter_root: str | Path | None = None,
               chat_max_tokens: int = 256) -> FastAPI:
    """The FastAPI app; it starts the engine's background thread on startup and stops it on shutdown."""
    root = Path(adapter_root).resolve() if adapter_root is not None else None

    async def lifespan(app: FastAPI):
        engine.start()
        yield
        engine.stop()

    app = FastAPI(title="lorakit", lifespan=lifespan)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError) -> JSONResponse:
        return _error(err.status, err.message, err.code, err.param)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        if first.get("type") == "json_invalid":
            return _error(400, f"request body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}", "invalid_json")
        return _error(400, f"field {field or 'body'}: {first['msg']}", "invalid_request", field)

    @app.get("/health")
    async def health() -> dict:
        running = engine.scheduler.running
        return {"status": "ok", "base": engine.base_name, "resident_adapters": len(engine.cache.resident),
                "queued": engine.scheduler.queued, "running": len(running) if running is not None else 0}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(engine.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models() -> dict:
        created = int(time.time())
        data = [{"id": engine.base_name, "object": "model", "created": created, "owned_by": "lorakit", "parent": None,
                 "root": engine.base_name}]
        data += [{"id": name, "object": "model", "created": created, "owned_by": "lorakit", "parent": engine.base_name,
                  "root": source} for name, source in sorted(engine.adapters().items())]
        return {"object": "list", "data": data}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        ids = engine.encode(body.prompt)
        return await _generate(engine, request, body, ids, body.sampling(16), chat=False)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        try:
            ids = engine.encode_chat([m.model_dump() for m in body.messages])
        except LorakitError as err:
            raise _from_lorakit(err) from None
        return await _generate(engine, request, body, ids, body.sampling(chat_max_tokens), chat=True)

    def _check_admin(request: Request) -> None:
        if admin_token is None:
            raise ApiError(403, "admin endpoints are disabled: start the server with --admin-token or LORAKIT_ADMIN_TOKEN",
                           "admin_disabled")
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), admin_token.encode()):
            raise ApiError(401, "missing or wrong bearer token for an admin endpoint", "unauthorized")

    @app.post("/v1/adapters", status_code=201)
    async def load(body: LoadAdapterRequest, request: Request) -> dict:
        _check_admin(request)
        source = _allowed_source(body.path, root)
        try:
            await run_in_threadpool(engine.load_adapter, body.name, source)
        except LorakitError as err:
            raise _from_lorakit(err) from None
        return {"id": body.name, "object": "model", "parent": engine.base_name, "root": source}

    @app.delete("/v1/adapters/{name}")
    async def unload(name: str, request: Request) -> dict:
        _check_admin(request)
        try:
            await run_in_threadpool(engine.unload_adapter, name)
        except LorakitError as err:
            raise _from_lorakit(err) from None
        return {"id": name, "object": "model", "deleted": True}

    return app


def _allowed_source(path: str, root: Path | None) -> str:
    """``path`` if it is a ``registry:`` reference or resolves (symlinks followed) inside ``root``."""
    if path.startswith("registry:"):
        return path
    if root is None:
        raise ApiError(403, "no --adapter-root is configured, so adapters cannot be loaded from paths", "path_forbidden", "path")
    candidate = Path(path)
    resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if not resolved.is_relative_to(root):
        raise ApiError(403, f"path {path!r} lies outside the adapter root {str(root)!r}", "path_forbidden", "path")
    return str(resolved)


async def _generate(engine: Engine, http: Request, body, ids: list[int], params, chat: bool):
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()

    def emit(kind: str, payload) -> None:
        try:
            loop.call_soon_threadsafe(events.put_nowait, (kind, payload))
        except RuntimeError:  # the event loop is gone (server shutting down)
            pass

    try:
        job = engine.submit(body.model, ids, params, emit)
    except LorakitError as err:
        raise _from_lorakit(err) from None
    meta = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": body.model}
    if body.stream:
        return StreamingResponse(_stream(job, events, meta, chat), media_type="text/event-stream")
    pieces = []
    while True:
        try:
            kind, payload = await asyncio.wait_for(events.get(), timeout=0.5)
        except asyncio.TimeoutError:
            if await http.is_disconnected():
                job.cancel()
                return Response(status_code=499)
            continue
        if kind == "text":
            pieces.append(payload)
        elif kind == "error":
            raise _from_lorakit(payload)
        else:
            break
    usage = {"prompt_tokens": len(ids), "completion_tokens": len(job.tokens), "total_tokens": len(ids) + len(job.tokens)}
    text = "".join(pieces)
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": job.finish_reason}
        return {**meta, "object": "chat.completion", "choices": [choice], "usage": usage}
    choice = {"index": 0, "text": text, "finish_reason": job.finish_reason, "logprobs": None}
    return {**meta, "object": "text_completion", "choices": [choice], "usage": usage}


async def _stream(job, events: asyncio.Queue, meta: dict, chat: bool) -> AsyncIterator[str]:
    """Server-sent events in OpenAI's chunk format, ending with ``data: [DONE]``; a client that goes away
    cancels the request."""
    kind_name = "chat.completion.chunk" if chat else "text_completion"

    def chunk(text: str | None, finish: str | None, first: bool = False) -> str:
        if chat:
            delta = ({"role": "assistant"} if first else {}) | ({"content": text} if text is not None else {})
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
        return f"data: {json.dumps({**meta, 'object': kind_name, 'choices': [choice]})}\n\n"

    try:
        if chat:
            yield chunk(None, None, first=True)
        while True:
            kind, payload = await events.get()
            if kind == "text":
                yield chunk(payload, None)
            elif kind == "error":
                api = _from_lorakit(payload)
                yield f"data: {json.dumps({'error': {'message': api.message, 'type': 'server_error', 'code': api.code}})}\n\n"
                break
            else:
                yield chunk(None if chat else "", job.finish_reason)
                break
        yield "data: [DONE]\n\n"
    finally:
        if job.finish_reason is None:
            job.cancel()
